"""No shipped text claims that bf16 (or any variant) is faster on a CPU without saying on which CPU.

bf16 is several times faster than fp32 on CPUs with AVX512-BF16 or AMX and 14x slower on an AVX2-only
EPYC (issue 17); a tooltip, error message, workflow note or node help page that recommends it for
"a CPU" sends most designers to the slowest setting. This scans every string literal in the Python
packages (messages, tooltips, descriptions, docstrings), the workflows' notes and the node help pages.
"""

from __future__ import annotations

import ast
import json
import re

import pytest
from _comfy_pack import ROOT

PY_FOLDERS = ("nodes", "pvtt_accel", "pvtt_train")
#: Phrases that were shipped before issue 17 and are wrong on most CPUs.
BANNED = ("faster cpu choice", "bf16 alone is still faster", "2.5x faster", "2.5× faster", "about 2.5x",
          "about 2.5×")
SPEED = re.compile(r"faster|speed-?up|twice as fast|\b\d+(\.\d+)?\s*[x×](?![a-z0-9])")
#: What makes a bf16-on-CPU speed claim conditional: the CPU feature it needs, or the opposite case.
CONDITION = re.compile(r"avx-?512|amx|native|emulat|slower|depends on|only where|without it")


def python_strings(path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):  # f-strings: their literal parts, joined
            found.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return found


def json_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in json_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return []


def shipped_texts() -> dict[str, list[str]]:
    texts = {}
    for folder in PY_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            texts[str(path.relative_to(ROOT))] = python_strings(path)
    for path in sorted((ROOT / "workflows").glob("*.json")):
        texts[str(path.relative_to(ROOT))] = json_strings(json.loads(path.read_text()))
    for path in sorted((ROOT / "web" / "docs").glob("*.md")):
        texts[str(path.relative_to(ROOT))] = [path.read_text()]
    return texts


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+|\n+|\|", text.lower()) if s.strip()]


def unconditional_bf16_cpu_claims(text: str) -> list[str]:
    """Sentences that say bf16 is faster on a CPU without naming the CPU feature it needs."""
    bad = [s for s in sentences(text) if "bf16" in s and "cpu" in s and SPEED.search(s) and not CONDITION.search(s)]
    return bad + [p for p in BANNED if p in text.lower()]


@pytest.mark.parametrize("claim, bad", [
    ("On a CPU, bf16 + compile 'default' samples the 4-step student about 2.5x faster.", True),
    ("Without it, set int8 to off (bf16 is the faster CPU choice).", True),
    ("On a CPU it runs in bf16 and samples twice as fast.", True),
    ("bf16 is faster on GPUs and on CPUs with AVX512-BF16.", False),
    ("bf16 on this CPU is emulated: measured 14x slower than fp32.", False),
    ("compile is 1.2x faster on this CPU.", False),  # not about bf16
])
def test_the_scanner_tells_conditional_claims_from_unconditional_ones(claim, bad):
    assert bool(unconditional_bf16_cpu_claims(claim)) == bad


def test_the_scan_reads_every_shipped_text():
    texts = shipped_texts()
    assert "nodes/accel_nodes.py" in texts and "workflows/PVTT accelerated template transfer.json" in texts
    assert "web/docs/PVTTAccelerate.md" in texts
    assert any("bf16" in s for s in texts["nodes/accel_nodes.py"])


def test_no_shipped_text_recommends_bf16_on_cpus_unconditionally():
    problems = {name: claims for name, strings in shipped_texts().items()
                if (claims := [c for s in strings for c in unconditional_bf16_cpu_claims(s)])}
    assert not problems, f"hardware-dependent speed claims without the hardware: {problems}"
