"""The pack inside a real ComfyUI, driven through the real frontend as a designer would use it.

Runs only when ``COMFYUI_DIR`` is set: either a git dir of ComfyUI's history (the rig is then built
or refreshed with comfyrig's ``setup.sh``) or a rig ``setup.sh`` already built (a folder holding
``ComfyUI/main.py`` and ``venv/``). The comfyrig tools are found at ``COMFYRIG_TOOLS`` (default
``../shared/tools/comfyrig`` beside the checkout). A fresh server is started on ``COMFYUI_PORT``
(default 8190) and stopped afterwards; the screenshot and the frontend's API prompt are kept in
``out/comfyui_real/``.

Every workflow in ``workflows/`` is loaded and run. They load the shipped student, ``models_shipped/pvtt_student_4step.safetensors``, which the
pack registers as a second ``pvtt`` model folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from _comfy_pack import ROOT, load_pack

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI git dir or a comfyrig rig "
                                                         "folder to run the real-ComfyUI test")

TOOLS = Path(os.environ.get("COMFYRIG_TOOLS", ROOT.parent / "shared" / "tools" / "comfyrig"))
PORT = int(os.environ.get("COMFYUI_PORT", "8190"))
URL = f"http://127.0.0.1:{PORT}"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
STUDENT = "pvtt_student_4step.safetensors"
ARTIFACTS = ROOT / "out" / "comfyui_real"


def get_json(path: str):
    with urllib.request.urlopen(URL + path, timeout=60) as response:
        return json.loads(response.read())


def rig_dir() -> Path:
    """The rig folder, building or refreshing it (and linking this pack in) when needed."""
    given = Path(COMFYUI_DIR)
    if (given / "ComfyUI" / "main.py").is_file() and (given / "venv" / "bin" / "python").is_file():
        link = given / "ComfyUI" / "custom_nodes" / ROOT.name
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        return given
    rig = Path(os.environ.get("COMFYRIG", "/tmp/comfyrig"))
    subprocess.run(["bash", str(TOOLS / "setup.sh"), str(given), str(ROOT)], check=True,
                   env={**os.environ, "COMFYRIG": str(rig)})
    return rig


def ensure_pack_requirements(rig: Path) -> None:
    """Install the pack's requirements into the rig's venv, as ComfyUI-Manager does for users."""
    python = rig / "venv" / "bin" / "python"
    if subprocess.run([str(python), "-c", "import cv2, diffusers, kornia, safetensors"],
                      check=False).returncode == 0:
        return
    requirements = ROOT / "requirements.txt"
    assert requirements.is_file(), "the rig venv lacks the pack's dependencies and requirements.txt is missing"
    constraints = rig / "venv" / "comfyrig-constraints.txt"  # keeps the rig's torch pair
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements), "-c", str(constraints)],
                   check=True)


@pytest.fixture(scope="module")
def comfy():
    """A fresh ComfyUI with this pack on PORT; yields the rig folder."""
    rig = rig_dir()
    ensure_pack_requirements(rig)
    assert (ROOT / "models_shipped" / STUDENT).is_file(), "the shipped student is missing from models_shipped/"
    env = {**os.environ, "COMFYRIG": str(rig), "COMFYRIG_STRICT": "1"}
    started = subprocess.run(["bash", str(TOOLS / "start.sh"), str(PORT)], env=env, capture_output=True, text=True,
                             check=False)
    try:
        assert started.returncode == 0, f"ComfyUI did not start cleanly:\n{started.stderr[-4000:]}"
        yield rig
    finally:
        subprocess.run(["bash", str(TOOLS / "stop.sh"), str(PORT)], env=env, check=False)


def test_every_pvtt_node_is_in_object_info(comfy):
    info = get_json("/object_info")
    missing = set(load_pack().NODE_CLASS_MAPPINGS) - set(info)
    assert not missing, f"ComfyUI does not list {missing}"
    listed = info["PVTTLoadModel"]["input"]["required"]["model_name"][0]
    assert {"pvtt_teacher.safetensors", "pvtt_student_16step.safetensors", "pvtt_student_8step.safetensors",
            STUDENT} <= set(listed), listed
    assert not any("encoder" in name for name in listed), listed
    assert "samples/pvtt_template.mp4" in info["PVTTLoadVideo"]["input"]["required"]["video"][0]


def test_node_help_pages_are_served(comfy):
    for node_id in load_pack().NODE_CLASS_MAPPINGS:
        with urllib.request.urlopen(f"{URL}/extensions/{ROOT.name}/docs/{node_id}.md", timeout=30) as response:
            assert response.read().decode().startswith("# PVTT "), node_id


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_offered_as_a_template(comfy, workflow):
    templates = get_json("/api/workflow_templates")
    assert workflow.stem in templates.get(ROOT.name, []), templates
    served = get_json(f"/api/workflow_templates/{ROOT.name}/{workflow.name}")
    assert served == json.loads(workflow.read_text())


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_in_the_real_frontend(comfy, workflow):
    import cv2

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{workflow.stem}.png"
    result = subprocess.run(
        ["node", str(TOOLS / "run_ui_workflow.mjs"), str(workflow), str(shot), "--url", URL, "--timeout", "300",
         "--save-api", str(ARTIFACTS / f"{workflow.stem}.api.json")],
        capture_output=True, text=True, env={**os.environ, "COMFYRIG_NODE_DIR": str(comfy / "node")}, check=False)
    report = result.stdout + result.stderr
    (ARTIFACTS / f"{workflow.stem}.log").write_text(report)
    assert result.returncode == 0, report
    assert "MISSING" not in report, report
    preview = re.search(r"output node \d+ images: output/(\S+\.webp)", report)
    assert preview, report
    video = comfy / "ComfyUI" / "output" / Path(preview.group(1)).with_suffix(".mp4")
    assert video.is_file(), f"no MP4 next to the preview: {video}"
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 9, f"{video.name} has {frames} frames, the template has 9"
    shutil.copy(video, ARTIFACTS / video.name)
