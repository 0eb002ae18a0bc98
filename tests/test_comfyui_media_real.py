"""Uploads, core VIDEO and the saved MP4 in a real ComfyUI, through the real frontend (``_comfy_media.mjs``).

Runs only when ``COMFYUI_DIR`` is set (see ``test_comfyui_real.py``, whose server fixture it shares; the port is
``COMFYUI_PORT``). A designer's template with sound is uploaded through the node's own upload button, the
product photo into a subfolder of the input folder; the workflow runs; the saved MP4 is read back with PyAV
(H.264, yuv420p, AAC, workflow metadata), played in a ``<video>`` element in headless Chromium, and dropped
back onto the emptied canvas, which must rebuild the same graph.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _comfy_pack import ROOT
from test_comfyui_real import ARTIFACTS, TOOLS, URL, comfy  # noqa: F401 - comfy is the shared server fixture

from pvtt_train.media.av_io import read_audio, write_mp4
from pvtt_train.media.video_io import read_video

CORE_WORKFLOW = ROOT / "workflows" / "PVTT core video template transfer.json"
PVTT_WORKFLOW = ROOT / "workflows" / "PVTT 4-step template transfer.json"
TONE_HZ, FRAMES, FPS = 441.0, 9, 8.0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The shipped template with a 441 Hz tone as its sound, a renamed mask video and the product photo."""
    folder = tmp_path_factory.mktemp("uploads")
    frames, fps = read_video(ROOT / "samples" / "pvtt_template.mp4")
    t = np.arange(round(44100 * len(frames) / fps)) / 44100
    wave = torch.from_numpy((np.stack([np.sin(2 * np.pi * TONE_HZ * t)] * 2) * 0.5).astype(np.float32))[None]
    write_mp4(folder / "designer_template.mp4", frames, fps, {"waveform": wave, "sample_rate": 44100})
    shutil.copy(ROOT / "samples" / "pvtt_mask.mp4", folder / "designer_mask.mp4")
    shutil.copy(ROOT / "samples" / "pvtt_product.png", folder / "designer_product.png")
    return folder


def drive(comfy, workflow: Path, *options: str) -> dict:
    result = subprocess.run(
        ["node", str(ROOT / "tests" / "_comfy_media.mjs"), str(workflow), "--url", URL, "--node-dir",
         str(comfy / "node"), *options], capture_output=True, text=True, timeout=600, check=False)
    line = next((x for x in result.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(line[len("REPORT "):])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"media_{workflow.stem.replace(' ', '_')}.json").write_text(json.dumps(report, indent=1))
    assert not [e for e in report["errors"] if e.startswith("driver")], report["errors"]
    assert report["status"] == "success", report.get("messages")
    return report


def check_mp4(path: Path, workflow_sent: dict) -> dict:
    """PyAV's view of a saved MP4: H.264 yuv420p, the template's frames, its sound, the workflow inside."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {"codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
                "audio": [s.codec_context.name for s in container.streams.audio],
                "frames": sum(1 for _ in container.decode(video=0)), "metadata": dict(container.metadata)}
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["frames"] == FRAMES, info
    assert info["audio"] == ["aac"], info
    sound = read_audio(path)
    seconds = sound["waveform"].shape[-1] / sound["sample_rate"]
    assert FRAMES / FPS - 0.001 <= seconds <= FRAMES / FPS + 0.03, seconds
    spectrum = np.abs(np.fft.rfft(sound["waveform"][0, 0].numpy()))
    peak = np.fft.rfftfreq(sound["waveform"].shape[-1], 1 / sound["sample_rate"])[spectrum.argmax()]
    assert abs(peak - TONE_HZ) < 2, f"the template's {TONE_HZ} Hz tone did not come through: peak at {peak} Hz"
    saved = json.loads(info["metadata"]["workflow"])
    assert sorted(n["type"] for n in saved["nodes"]) == sorted(n["type"] for n in workflow_sent["nodes"])
    assert "prompt" in info["metadata"]
    return {**info, "audio_seconds": seconds, "peak_hz": float(peak)}


def check_playback_and_drop(report: dict, workflow_sent: dict) -> None:
    for played in report["played"]:
        assert played["error"] is None and played["readyState"] >= 2, played
        assert played["duration"] == pytest.approx(FRAMES / FPS, abs=0.03), played
        assert (played["width"], played["height"]) == (128, 128) and played["played"] is True, played
    for dropped in report["dropped"]:
        sent = sorted([n["id"], n["type"]] for n in workflow_sent["nodes"])
        assert [n[:2] for n in dropped["nodes"]] == sent
        assert sorted(map(tuple, dropped["links"])) == sorted(tuple(x[:6]) for x in workflow_sent["links"])
        widgets = {n[0]: n[2] for n in dropped["nodes"]}
        for node in workflow_sent["nodes"]:
            assert widgets[node["id"]] == node.get("widgets_values", []), node["type"]


def test_core_video_workflow_runs_on_files_uploaded_through_the_widgets(comfy, media):
    report = drive(comfy, CORE_WORKFLOW, "--upload", f"2={media / 'designer_template.mp4'}",
                   "--upload", f"3={media / 'designer_mask.mp4'}",
                   "--upload-to", f"4={media / 'designer_product.png'}@pvtt_designer")
    uploads = report["uploads"]
    assert uploads["2"]["value"] == "designer_template.mp4" and uploads["3"]["value"] == "designer_mask.mp4"
    assert uploads["4"]["value"] == "pvtt_designer/designer_product.png"
    input_dir = comfy / "ComfyUI" / "input"
    assert (input_dir / "designer_template.mp4").is_file()
    assert (input_dir / "pvtt_designer" / "designer_product.png").is_file()
    (mp4,) = report["mp4s"]
    path = comfy / "ComfyUI" / "output" / mp4["subfolder"] / mp4["filename"]
    info = check_mp4(path, report["workflow_sent"])
    check_playback_and_drop(report, report["workflow_sent"])
    shutil.copy(path, ARTIFACTS / "core_video_template_transfer.mp4")
    print(f"core workflow: {mp4['filename']} {info['codec']}/{info['pix_fmt']} {info['frames']} frames, "
          f"sound {info['audio_seconds']:.3f} s peak {info['peak_hz']:.1f} Hz; played {report['played']}")


def test_pvtt_save_video_keeps_the_templates_sound_and_plays_and_restores(comfy, media):
    """The shipped workflow with the template uploaded through PVTT Load Video's button and its new audio
    output connected to PVTT Save Video's audio input."""
    ui = json.loads(PVTT_WORKFLOW.read_text())
    loaders = {n["title"]: n["id"] for n in ui["nodes"] if n["type"] == "PVTTLoadVideo"}
    template = loaders["Template video"]
    saver = next(n["id"] for n in ui["nodes"] if n["type"] == "PVTTSaveVideo")
    report = drive(comfy, PVTT_WORKFLOW, "--upload", f"{template}={media / 'designer_template.mp4'}",
                   "--connect", f"{template}:5->{saver}:audio")
    # the saved workflow's widget values land on the same widgets, the upload button notwithstanding
    saved = {n["id"]: n["widgets_values"] for n in ui["nodes"] if n["type"] != "MarkdownNote"}
    for node_id, values in saved.items():
        loaded = [w[2] for w in report["loaded_widgets"][str(node_id)] if w[1] != "button"]
        assert loaded == values, (node_id, loaded, values)
    assert report["uploads"][str(template)]["value"] == "designer_template.mp4"
    (mp4,) = report["mp4s"]
    assert re.fullmatch(r"pvtt_\d{5}\.mp4", mp4["filename"]), mp4
    path = comfy / "ComfyUI" / "output" / mp4["subfolder"] / mp4["filename"]
    info = check_mp4(path, report["workflow_sent"])
    check_playback_and_drop(report, report["workflow_sent"])
    shutil.copy(path, ARTIFACTS / "pvtt_save_video.mp4")
    print(f"PVTT Save Video: {mp4['filename']} {info['codec']}/{info['pix_fmt']} {info['frames']} frames, "
          f"sound {info['audio_seconds']:.3f} s peak {info['peak_hz']:.1f} Hz; played {report['played']}")


def test_core_video_workflow_is_offered_with_a_readable_title(comfy):
    from test_comfyui_real import get_json

    templates = get_json("/api/workflow_templates")
    assert CORE_WORKFLOW.stem in templates.get(ROOT.name, []), templates


if not os.environ.get("COMFYUI_DIR"):
    pytestmark = pytest.mark.skip(reason="set COMFYUI_DIR to a comfyrig rig folder to run the real-ComfyUI test")
