"""The native Wan-VACE workflows in a real ComfyUI, through the real frontend, as a designer runs them.

Runs only when ``COMFYUI_DIR`` names a comfyrig rig folder (``ComfyUI/main.py`` and ``venv/``); the comfyrig
tools are found at ``COMFYRIG_TOOLS`` (default ``../shared/tools/comfyrig``). The server gets a base
directory of its own (``--base-directory``): this checkout and the test-only pack ``comfy_test_nodes`` as its
only custom nodes, and tiny random files a designer would have in its models folders:

- ``diffusion_models``: the teacher (named as a stock Wan2.1-VACE file) and the student from
  ``export --format comfy``; ``loras``: the student as ``export-lora --format comfy``;
- ``vae``: a random Wan 2.1 VAE in ComfyUI's layout (it hard-codes dim 96, z 16).

A full UMT5-XXL does not fit a CPU test, so each shipped workflow is loaded as shipped (no missing node
types), then run with its CLIPLoader and CLIPTextEncode nodes replaced by PVTT Test Prompt Embedding
(tests only). The screenshot of the LoRA workflow goes to ``docs/screenshots/native_wan_vace_pvtt_lora.png``;
logs and videos to ``out/comfyui_native_real/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _comfy_pack import ROOT
from _native_fixtures import (
    Z16_VAE,
    comfy_shaped_model,
    full_wan21_vae,
    perturbed_student,
    save_pair,
)

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "ComfyUI" / "main.py").is_file(),
                                reason="set COMFYUI_DIR to a comfyrig rig folder to run the real-ComfyUI test")

TOOLS = Path(os.environ.get("COMFYRIG_TOOLS", ROOT.parent / "shared" / "tools" / "comfyrig"))
PORT = int(os.environ.get("COMFYUI_NATIVE_PORT", "8191"))
URL = f"http://127.0.0.1:{PORT}"
ARTIFACTS = ROOT / "out" / "comfyui_native_real"
SCREENSHOT = ROOT / "docs" / "screenshots" / "native_wan_vace_pvtt_lora.png"
WORKFLOWS = {"lora": ROOT / "workflows" / "Native Wan-VACE with the PVTT LoRA.json",
             "student": ROOT / "workflows" / "Native Wan-VACE with the PVTT student.json"}
PROMPT_NODES = {"CLIPLoader", "CLIPTextEncode"}
#: The SVDs of export-lora on tiny layers run several times faster on one thread than on two busy cores.
ONE_THREAD = ("--threads", "1")


def widget(workflow: dict, node_type: str) -> str:
    return next(n for n in workflow["nodes"] if n["type"] == node_type)["widgets_values"][0]


def place_models(models: Path, work: Path) -> None:
    """The files the shipped workflows name, made by PVTT's own export commands from a tiny random pair."""
    from safetensors.torch import save_file

    from pvtt_train.__main__ import main
    from pvtt_train.models import native_wan

    lora_wf, student_wf = (json.loads(WORKFLOWS[k].read_text()) for k in ("lora", "student"))
    for folder in ("diffusion_models", "loras", "vae"):
        (models / folder).mkdir(parents=True)
    teacher = comfy_shaped_model(vae_config=Z16_VAE)
    teacher_path, student_path = save_pair(work, teacher, perturbed_student(teacher))
    main([*ONE_THREAD, "export", "--model", str(teacher_path), "--format", "comfy",
          "--out", str(models / "diffusion_models" / widget(lora_wf, "UNETLoader"))])
    main([*ONE_THREAD, "export", "--model", str(student_path), "--format", "comfy",
          "--out", str(models / "diffusion_models" / widget(student_wf, "UNETLoader"))])
    main([*ONE_THREAD, "export-lora", "--teacher", str(teacher_path), "--student", str(student_path), "--rank", "4",
          "--format", "comfy", "--out", str(models / "loras" / widget(lora_wf, "LoraLoaderModelOnly"))])
    vae = full_wan21_vae()
    save_file(native_wan.vae_tensors(vae), str(models / "vae" / widget(lora_wf, "VAELoader")),
              metadata=native_wan.vae_header(vae))


def with_test_prompt(workflow: dict) -> dict:
    """The workflow with CLIPLoader + CLIPTextEncode replaced by PVTT Test Prompt Embedding (one node feeding
    both prompt inputs of PVTT VACE Conditioning)."""
    workflow = json.loads(json.dumps(workflow))
    dropped = {n["id"] for n in workflow["nodes"] if n["type"] in PROMPT_NODES}
    node_id = workflow["last_node_id"] + 1
    links = []
    for link in workflow["links"]:
        if link[1] in dropped and link[3] not in dropped:  # a prompt into PVTT VACE Conditioning
            link = [link[0], node_id, 0, *link[3:]]
        if link[1] not in dropped and link[3] not in dropped:
            links.append(link)
    workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] not in dropped]
    workflow["nodes"].append({
        "id": node_id, "type": "PVTTTestPromptEmbedding", "pos": [420, 60], "size": [400, 80], "flags": {},
        "order": 0, "mode": 0, "properties": {"Node name for S&R": "PVTTTestPromptEmbedding"},
        "inputs": [{"localized_name": "seed", "name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
        "outputs": [{"localized_name": "CONDITIONING", "name": "CONDITIONING", "type": "CONDITIONING",
                     "links": [link[0] for link in links if link[1] == node_id]}],
        "widgets_values": [3]})
    workflow["links"], workflow["last_node_id"] = links, node_id
    return workflow


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """A fresh ComfyUI on PORT whose base directory holds only this pack, the test pack and the tiny models."""
    rig = Path(COMFYUI_DIR)
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "pvtt").symlink_to(ROOT, target_is_directory=True)  # the pack's name, as installed
    (base / "custom_nodes" / "pvtt_test_nodes").symlink_to(Path(__file__).with_name("comfy_test_nodes"),
                                                           target_is_directory=True)
    place_models(base / "models", tmp_path_factory.mktemp("pvtt_models"))
    env = {**os.environ, "COMFYRIG": str(rig), "COMFYRIG_STRICT": "1", "COMFY_ARGS": f"--base-directory {base}"}
    started = subprocess.run(["bash", str(TOOLS / "start.sh"), str(PORT)], env=env, capture_output=True, text=True,
                             check=False)
    try:
        assert started.returncode == 0, f"ComfyUI did not start cleanly:\n{started.stderr[-4000:]}"
        yield rig, base
    finally:
        subprocess.run(["bash", str(TOOLS / "stop.sh"), str(PORT)], env=env, check=False)


def run_ui(rig: Path, workflow: Path, shot: Path, *flags: str) -> str:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["node", str(TOOLS / "run_ui_workflow.mjs"), str(workflow), str(shot), "--url", URL,
                             "--timeout", "500", *flags], capture_output=True, text=True,
                            env={**os.environ, "COMFYRIG_NODE_DIR": str(rig / "node")}, check=False)
    report = result.stdout + result.stderr
    (ARTIFACTS / f"{workflow.stem}.log").write_text(report)
    assert result.returncode == 0, report
    assert "MISSING" not in report, report
    return report


@pytest.mark.parametrize("kind", WORKFLOWS)
def test_native_workflow_loads_in_the_real_frontend_with_no_missing_nodes(comfy, kind):
    rig, _ = comfy
    shot = SCREENSHOT if kind == "lora" else ARTIFACTS / f"{WORKFLOWS[kind].stem}.png"
    report = run_ui(rig, WORKFLOWS[kind], shot, "--no-queue")
    assert f"loaded: {len(json.loads(WORKFLOWS[kind].read_text())['nodes'])} nodes on canvas" in report, report
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.parametrize("kind", WORKFLOWS)
def test_native_workflow_runs_and_writes_the_video(comfy, kind):
    import cv2

    rig, base = comfy
    shipped = json.loads(WORKFLOWS[kind].read_text())
    runnable = ARTIFACTS / f"{WORKFLOWS[kind].stem}_test_prompt.json"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runnable.write_text(json.dumps(with_test_prompt(shipped)))
    report = run_ui(rig, runnable, ARTIFACTS / f"{runnable.stem}.png")
    saved = re.search(r"output node \d+ images: output/(\S+\.mp4)", report)
    assert saved, report
    video = base / "output" / saved.group(1)
    assert video.is_file(), video
    capture = cv2.VideoCapture(str(video))
    size = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 9 and size == (128, 128), f"{video.name}: {frames} frames of {size}; the template is 9 of 128x128"
    shutil.copy(video, ARTIFACTS / f"{WORKFLOWS[kind].stem}.mp4")
