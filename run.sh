#!/usr/bin/env bash
# PVTT quick start on a fresh machine with Python 3.11:
#   bash run.sh demo   # set up .venv, then: data -> shipped teacher -> 4-step student -> report
#   bash run.sh test   # set up .venv with test tools, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${PVTT_VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt "$@"
}

case "${1:-}" in
  demo)
    shift
    setup -r requirements-train.txt
    exec "$VENV/bin/python" -m pvtt_train demo --out "${PVTT_DEMO_OUT:-out/demo}" "$@"
    ;;
  test)
    shift
    setup -r requirements-train.txt -r requirements-dev.txt
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash run.sh demo [demo options] | bash run.sh test [pytest options]" >&2
    exit 2
    ;;
esac
