"""The registry metadata (pyproject.toml) installs what requirements.txt installs, with floors only."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_pyproject_dependencies_match_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(requirement_lines(ROOT / "requirements.txt"))


def test_pyproject_accel_extra_matches_requirements_accel_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["optional-dependencies"]["accel"]) == sorted(requirement_lines(ROOT / "requirements-accel.txt"))


def test_shared_dependencies_use_floors_not_pins():
    for line in requirement_lines(ROOT / "requirements.txt") + requirement_lines(ROOT / "requirements-accel.txt"):
        assert ">=" in line and "==" not in line and "<" not in line.replace(">=", ""), line
