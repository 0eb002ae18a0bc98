"""The pack inside a real ComfyUI, driven through the real frontend as a designer would use it.

Runs only when ``COMFYUI_DIR`` is set: either a git dir of ComfyUI's history (the rig is then built
or refreshed with comfyrig's ``setup.sh``) or a rig ``setup.sh`` already built (a folder holding
``ComfyUI/main.py`` and ``venv/``). The comfyrig tools are found at ``COMFYRIG_TOOLS`` (default
``../shared/tools/comfyrig`` beside the checkout). A fresh server is started on ``COMFYUI_PORT``
(default 8190) and stopped afterwards; the screenshot and the frontend's API prompt are kept in
``out/comfyui_real/``.

Every workflow in ``workflows/`` but the native Wan-VACE ones (``test_comfyui_native_real.py``) is loaded and
run. They load the shipped paste-residual models (the 4-step student,
``models_shipped/pvtt_residual_student_4step.safetensors``, and for the comparison its teacher and 16- and 8-step
students), which the pack registers as a second ``pvtt`` model folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from urllib.parse import quote
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
#: The native Wan-VACE workflows need a designer's Wan files; test_comfyui_native_real.py runs them on tiny ones.
PVTT_MODEL_WORKFLOWS = [w for w in WORKFLOWS if not w.stem.startswith("Native ")
                        and '"LoadVideo"' not in w.read_text()]  # core Load Video: test_comfyui_media_real.py
STUDENT = "pvtt_residual_student_4step.safetensors"  # the designer workflows' model
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
            "pvtt_student_4step.safetensors", "pvtt_teacher_paste_residual.safetensors",
            "pvtt_residual_student_16step.safetensors", "pvtt_residual_student_8step.safetensors",
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
    served = get_json(f"/api/workflow_templates/{quote(ROOT.name)}/{quote(workflow.name)}")
    assert served == json.loads(workflow.read_text())


@pytest.mark.parametrize("workflow", PVTT_MODEL_WORKFLOWS, ids=lambda p: p.stem)
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


# --- errors, Cancel and unload in the real server ---------------------------------------------------

def post_json(path: str, body: dict):
    request = urllib.request.Request(URL + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def api_prompt(**changes) -> dict:
    """The 4-step workflow's API prompt as the frontend made it (saved by the workflow test above),
    with ``changes`` as {node id: {input: value}}."""
    saved = ARTIFACTS / "PVTT 4-step template transfer.api.json"
    assert saved.is_file(), "run test_workflow_runs_in_the_real_frontend first (it saves the API prompt)"
    prompt = json.loads(saved.read_text())
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)
    return prompt


def wait_for_history(prompt_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry and (entry["status"]["completed"] or entry["status"]["status_str"] == "error"):
            return entry
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


def server_log(rig: Path) -> str:
    return (rig / "logs" / f"comfyui-{PORT}.log").read_text(errors="replace")


def test_a_designer_mistake_shows_in_the_error_dialog_with_the_fix(comfy):
    """The mask video loaded from frame 5 (4 frames skipped) no longer matches the 9-frame template."""
    ui = json.loads((ROOT / "workflows" / "PVTT 4-step template transfer.json").read_text())
    mask_loader = next(n for n in ui["nodes"] if n["type"] == "PVTTLoadVideo"
                       and n["widgets_values"][0] == "samples/pvtt_mask.mp4")
    mask_loader["widgets_values"][2] = 4  # skip_first_frames
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    broken = ARTIFACTS / "mask_mismatch.json"
    broken.write_text(json.dumps(ui))
    result = subprocess.run(
        ["node", str(TOOLS / "run_ui_workflow.mjs"), str(broken), str(ARTIFACTS / "error_dialog.png"), "--url", URL,
         "--timeout", "300"],
        capture_output=True, text=True, env={**os.environ, "COMFYRIG_NODE_DIR": str(comfy / "node")}, check=False)
    report = result.stdout + result.stderr
    (ARTIFACTS / "error_dialog.log").write_text(report)
    assert result.returncode == 1, report  # an execution error, not a crash or a silent empty output
    assert re.search(r"EXECUTION ERROR in node \d+ \(PVTTTemplateTransfer\): PVTT\.InputError: mask has 5 frames but the "
                     r"template video has 9; .*Give one mask frame per video frame", report), report
    assert "output node" not in report  # nothing was saved from the failed run


def test_cancel_stops_a_long_sampling_run_within_a_step(comfy):
    """The teacher at 200 steps takes many seconds; /interrupt (the Cancel button) must end it within
    about one step, and the server must run the next prompt normally."""
    prompt = api_prompt(**{"1": {"model_name": "pvtt_teacher.safetensors"}, "5": {"steps": 200, "seed": 11}})
    queued = post_json("/prompt", {"prompt": prompt, "client_id": "pvtt-cancel-test"})
    prompt_id = queued["prompt_id"]
    deadline = time.monotonic() + 120
    while not get_json("/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.0)  # loaders done, sampling under way
    sent = time.time()
    post_json("/interrupt", {})
    entry = wait_for_history(prompt_id)
    messages = dict(entry["status"]["messages"])
    assert "execution_interrupted" in messages, entry["status"]
    assert messages["execution_interrupted"]["node_type"] == "PVTTTemplateTransfer", messages
    latency = messages["execution_interrupted"]["timestamp"] / 1000 - sent
    started = messages["execution_start"]["timestamp"] / 1000
    assert latency < 1.5, f"Cancel took {latency:.2f} s"
    assert sent - started > 2.5, "cancelled before sampling started; the test proves nothing"
    after = post_json("/prompt", {"prompt": api_prompt(**{"5": {"seed": 12}}), "client_id": "pvtt-cancel-test"})
    assert wait_for_history(after["prompt_id"])["status"]["status_str"] == "success"
    print(f"Cancel answered in {latency * 1000:.0f} ms")


def test_free_model_and_node_cache_releases_pvtt_models(comfy):
    """ComfyUI's "Free model and node cache" (POST /free) must release PVTT's models: the pack holds
    no reference of its own, and its finaliser logs each release."""
    done = post_json("/prompt", {"prompt": api_prompt(**{"5": {"seed": 13}}), "client_id": "pvtt-free-test"})
    assert wait_for_history(done["prompt_id"])["status"]["status_str"] == "success"
    before = server_log(comfy).count(f"released {STUDENT}")
    post_json("/free", {"unload_models": True, "free_memory": True})
    deadline = time.monotonic() + 30
    while server_log(comfy).count(f"released {STUDENT}") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_log(comfy).count(f"released {STUDENT}") > before, "the 4-step student was not released"
