"""A batch of product photos in a real ComfyUI, queued through the real frontend: one saved clip per photo.

Runs only when ``COMFYUI_DIR`` is set (see ``test_comfyui_real.py``, whose server fixture it reuses, on
``COMFYUI_PORT``). Three product photos (the sample photo, recoloured) are written to ComfyUI's input
folder, loaded with PVTT Load Image, batched with core ImageBatch, and rendered by Template Transfer
with the shipped 4-step student; Background Preserve compares the 27 frames with the one 9-frame
template, and Save Video, given ``frames_per_clip``, writes three numbered MP4s. The prompt is loaded
into the frontend (``app.loadApiJson``) and queued from there, so the pack's web extension runs too;
the screenshot (``out/comfyui_real/product_batch.png``) shows the working-size text on the node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
import uuid

import numpy as np
import pytest
from test_comfyui_real import ARTIFACTS, COMFYUI_DIR, ROOT, STUDENT, TOOLS, URL, comfy  # noqa: F401

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run the real-ComfyUI test")

PHOTOS = [f"pvtt_batch_product_{k}.png" for k in (1, 2, 3)]
KNOWN_FRONTEND_ERROR = "Cannot read properties of undefined (reading 'id')"


def write_photos(input_dir):
    from PIL import Image

    photo = np.asarray(Image.open(ROOT / "samples" / "pvtt_product.png").convert("RGB")).astype(np.float32)
    input_dir.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(PHOTOS):
        recoloured = photo.copy()
        if k:
            recoloured[..., k - 1] *= 0.35  # a differently coloured product on the same light background
        Image.fromarray(recoloured.round().astype(np.uint8)).save(input_dir / name)


def batch_prompt(prefix: str) -> dict:
    return {
        "1": {"class_type": "PVTTLoadModel", "inputs": {"model_name": STUDENT}},
        "2": {"class_type": "PVTTLoadVideo", "inputs": {"video": "samples/pvtt_template.mp4", "frame_load_cap": 0,
                                                         "skip_first_frames": 0, "select_every_nth": 1}},
        "3": {"class_type": "PVTTLoadVideo", "inputs": {"video": "samples/pvtt_mask.mp4", "frame_load_cap": 0,
                                                         "skip_first_frames": 0, "select_every_nth": 1}},
        "4": {"class_type": "PVTTLoadImage", "inputs": {"image": PHOTOS[0]}},
        "5": {"class_type": "PVTTLoadImage", "inputs": {"image": PHOTOS[1]}},
        "6": {"class_type": "PVTTLoadImage", "inputs": {"image": PHOTOS[2]}},
        "7": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["5", 0]}},
        "8": {"class_type": "ImageBatch", "inputs": {"image1": ["7", 0], "image2": ["6", 0]}},
        "9": {"class_type": "PVTTTemplateTransfer", "inputs": {
            "model": ["1", 0], "template_video": ["2", 0], "mask": ["3", 1], "product_image": ["8", 0], "steps": 0,
            "seed": 5, "preserve_background": True, "prompt": "", "negative_prompt": "", "photo_detail": True,
            "fit": "crop"}},
        "10": {"class_type": "PVTTBackgroundPreserve", "inputs": {
            "generated": ["9", 0], "template_video": ["2", 0], "mask": ["3", 1], "dilate_px": 2, "feather_px": 1.0}},
        "11": {"class_type": "PVTTSaveVideo", "inputs": {
            "images": ["10", 0], "filename_prefix": prefix, "fps": ["2", 3], "preview_format": "webp",
            "frames_per_clip": ["9", 1]}},
    }


def read_frames(path):
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.astype(np.float32))
    capture.release()
    return np.stack(frames)


def test_the_working_size_extension_is_served(comfy):
    with urllib.request.urlopen(f"{URL}/extensions/{ROOT.name}/js/pvtt_working_size.js", timeout=30) as response:
        assert b"PVTT.WorkingSize" in response.read()


def test_a_batch_of_3_product_photos_gives_3_saved_clips(comfy):
    write_photos(comfy / "ComfyUI" / "input")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    prefix = f"PVTT/batch_{uuid.uuid4().hex[:8]}"  # a fresh prefix: never answered from the cache
    prompt = ARTIFACTS / "product_batch.api.json"
    prompt.write_text(json.dumps(batch_prompt(prefix), indent=2))
    result = subprocess.run(
        ["node", str(TOOLS / "run_ui_workflow.mjs"), str(prompt), str(ARTIFACTS / "product_batch.png"), "--url", URL,
         "--timeout", "400"],
        capture_output=True, text=True, env={**os.environ, "COMFYRIG_NODE_DIR": str(comfy / "node")}, check=False)
    report = result.stdout + result.stderr
    (ARTIFACTS / "product_batch.log").write_text(report)
    assert result.returncode == 0, report
    assert "MISSING" not in report, report
    # This frontend (1.27.10) logs one page error on every graph load, with or without this pack's
    # extension (seen with the shipped workflows too); any other page error fails the test.
    errors = re.search(r"page errors \((\d+)\): (.*)", report)
    assert not errors or errors.group(2).strip() == KNOWN_FRONTEND_ERROR, report
    previews = re.findall(r"output node 11 images: output/(\S+\.webp)", report)
    stem = prefix.split("/")[1]
    assert previews == [f"PVTT/{stem}_0000{k}.webp" for k in (1, 2, 3)], report
    text = re.search(r"output node 9 text: (.*)", report)
    assert text and "working size 16x16, 9-frame windows" in text.group(1), report
    assert "3 product photos give 3 clips of 9 frames" in text.group(1), report

    clips = [read_frames(comfy / "ComfyUI" / "output" / p.replace(".webp", ".mp4")) for p in previews]
    assert [c.shape[0] for c in clips] == [9, 9, 9]
    mask = read_frames(ROOT / "samples" / "pvtt_mask.mp4")[..., 0] > 127
    assert mask.shape == clips[0].shape[:3]
    inside = [float(np.abs(clips[0] - c)[mask].mean()) for c in clips[1:]]
    outside = [float(np.abs(clips[0] - c)[~mask].mean()) for c in clips[1:]]
    print(f"mean |clip1 - clip k| inside the mask {inside}, outside {outside} (0..255)")
    assert all(i > 5.0 for i in inside), inside  # the products differ
    assert all(o < 1.0 for o in outside), outside  # the background is the template's in every clip (lossy MP4)
