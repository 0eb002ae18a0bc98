"""Uploads, core VIDEO/AUDIO and the PyAV MP4 writer, without ComfyUI.

Every MP4 written here is read back with PyAV: codec, pixel format, frame count, durations and the
container's metadata are the file's, not the writer's intentions.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _comfy_pack import PACKAGE
from _node_fixtures import MASK, PRODUCT, TEMPLATE, TINY_NAME, nodes, outputs, paths, run
from PIL import Image

av_io = importlib.import_module(f"{PACKAGE}.pvtt_train.media.av_io")
core_video = importlib.import_module(f"{PACKAGE}.nodes.core_video")
tokens = importlib.import_module(f"{PACKAGE}.nodes.filename_tokens")
errors = importlib.import_module(f"{PACKAGE}.pvtt_train.errors")

WORKFLOW = {"last_node_id": 3, "nodes": [{"id": 1, "type": "PVTTSaveVideo"}], "links": [], "version": 0.4}
PROMPT = {"1": {"class_type": "PVTTSaveVideo", "inputs": {"fps": 8.0}}}


def tone(seconds: float, rate: int = 44100, channels: int = 2, hz: float = 440.0) -> dict:
    """ComfyUI AUDIO: a tone of ``hz`` (half that on the second channel)."""
    t = np.arange(round(seconds * rate)) / rate
    wave = np.stack([np.sin(2 * np.pi * hz * t), np.sin(np.pi * hz * t)][:channels]) * 0.5
    return {"waveform": torch.from_numpy(wave.astype(np.float32))[None], "sample_rate": rate}


def probe(path: Path) -> dict:
    """What PyAV reads from the file: streams, decoded frame count, durations, metadata."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {"codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
                "size": (video.codec_context.width, video.codec_context.height),
                "fps": float(video.average_rate), "metadata": dict(container.metadata),
                "audio": [(s.codec_context.name, s.codec_context.sample_rate, s.codec_context.channels)
                          for s in container.streams.audio]}
        info["frames"] = sum(1 for _ in container.decode(video=0))
    info["video_seconds"] = info["frames"] / info["fps"]
    sound = av_io.read_audio(path)
    info["audio_seconds"] = None if sound is None else sound["waveform"].shape[-1] / sound["sample_rate"]
    return info


def clip(frames=9, height=30, width=40, seed=0) -> torch.Tensor:
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


# --- the PyAV writer -----------------------------------------------------------------------------

def test_save_video_writes_h264_yuv420p_that_holds_the_workflow(folders):
    images = clip()
    result = run("PVTTSaveVideo", images=images, filename_prefix="PVTT/h264", fps=8.0,
                 prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW})
    (mp4,) = result["ui"]["pvtt_mp4"]
    assert mp4 == {"filename": "h264_00001.mp4", "subfolder": "PVTT", "type": "output"}
    info = probe(folders / "output" / "PVTT" / "h264_00001.mp4")
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["size"] == (40, 30)
    assert info["frames"] == 9 and info["fps"] == pytest.approx(8.0) and info["audio"] == []
    assert json.loads(info["metadata"]["workflow"]) == WORKFLOW  # what the frontend reads on drop
    assert json.loads(info["metadata"]["prompt"]) == PROMPT
    print(f"9 frames 40x30: {info}")


def test_odd_sizes_are_padded_not_cropped(tmp_path):
    frames = (clip(3, 31, 45).numpy() * 255).round().astype(np.uint8)
    info = probe(av_io.write_mp4(tmp_path / "odd.mp4", frames, 8.0))
    assert info["size"] == (46, 32) and info["frames"] == 3


def test_the_templates_sound_is_passed_through_as_aac_cut_to_the_clip(folders):
    run("PVTTSaveVideo", images=clip(), filename_prefix="sound", fps=8.0, audio=tone(3.0))
    info = probe(folders / "output" / "sound_00001.mp4")
    assert info["audio"] == [("aac", 44100, 2)]
    assert info["video_seconds"] == pytest.approx(9 / 8)
    # AAC codes whole 1024-sample frames: the sound may run up to one frame (23 ms) past the clip
    assert 9 / 8 - 0.001 <= info["audio_seconds"] <= 9 / 8 + 1024 / 44100 + 0.001, info
    print(f"clip {info['video_seconds']:.3f} s, sound {info['audio_seconds']:.4f} s (from a 3 s tone)")


def test_mono_sound_stays_mono(tmp_path):
    frames = (clip(4).numpy() * 255).astype(np.uint8)
    info = probe(av_io.write_mp4(tmp_path / "mono.mp4", frames, 4.0, tone(1.0, 22050, channels=1)))
    assert info["audio"] == [("aac", 22050, 1)] and info["audio_seconds"] == pytest.approx(1.0, abs=0.05)


def test_a_failed_write_leaves_no_file_at_all(tmp_path):
    frames = (clip(9).numpy() * 255).astype(np.uint8)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"the previous take")

    def cancel(done, total):
        if done == 4:
            raise KeyboardInterrupt("Cancel")

    with pytest.raises(KeyboardInterrupt):
        av_io.write_mp4(target, frames, 8.0, on_frame=cancel)
    assert target.read_bytes() == b"the previous take"  # never half-replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left behind


def test_save_video_cancelled_mid_write_leaves_no_partial_mp4(folders, monkeypatch):
    media_nodes = importlib.import_module(f"{PACKAGE}.nodes.media_nodes")
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(media_nodes, "check_interrupted", interrupt)
    with pytest.raises(RuntimeError, match="interrupted"):
        run("PVTTSaveVideo", images=clip(), filename_prefix="cut", fps=8.0)
    assert list((folders / "output").iterdir()) == []


def test_no_h264_encoder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(av_io, "H264_ENCODERS", ("no_such_encoder",))
    with pytest.raises(errors.InputError, match="no H.264 encoder .*pip install"):
        av_io.write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.uint8), 8.0)
    assert list(tmp_path.iterdir()) == []


def test_bad_audio_is_refused_with_what_audio_must_be(tmp_path):
    with pytest.raises(errors.InputError, match="waveform"):
        av_io.write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.uint8), 8.0, {"sample_rate": 44100})


def test_metadata_is_left_out_with_disable_metadata(folders, monkeypatch):
    media_nodes = importlib.import_module(f"{PACKAGE}.nodes.media_nodes")
    monkeypatch.setattr(media_nodes, "_metadata_disabled", lambda: True)
    run("PVTTSaveVideo", images=clip(2), filename_prefix="private", fps=8.0, prompt=PROMPT,
        extra_pnginfo={"workflow": WORKFLOW})
    metadata = probe(folders / "output" / "private_00001.mp4")["metadata"]
    assert "workflow" not in metadata and "prompt" not in metadata


# --- filename tokens -------------------------------------------------------------------------------

def test_date_and_size_tokens_are_replaced():
    now = time.struct_time((2026, 3, 7, 9, 5, 4, 0, 0, -1))
    assert tokens.expand_tokens("PVTT/%date:yyyy-MM-dd%/clip", now=now) == "PVTT/2026-03-07/clip"
    assert tokens.expand_tokens("%date:yy.M.d hh-mm-ss%", now=now) == "26.3.7 09-05-04"
    assert tokens.expand_tokens("%year%%month%%day%_%hour%%minute%%second%", now=now) == "20260307_090504"
    assert tokens.expand_tokens("c_%width%x%height%", 640, 360, now=now) == "c_640x360"
    assert tokens.expand_tokens("100%_%Node.widget%", now=now) == "100%_%Node.widget%"  # others are kept


def test_save_video_fills_in_the_date_folder(folders):
    day = time.strftime("%Y-%m-%d")
    run("PVTTSaveVideo", images=clip(2), filename_prefix="PVTT/%date:yyyy-MM-dd%/take_%width%", fps=8.0)
    if time.strftime("%Y-%m-%d") == day:  # not across midnight
        assert (folders / "output" / "PVTT" / day / "take_40_00001.mp4").is_file()


# --- uploads: widget options and annotated names ------------------------------------------------------

def test_loaders_have_upload_buttons_and_keep_their_widgets():
    video = nodes["PVTTLoadVideo"].INPUT_TYPES()
    assert list(video["required"]) == ["video", "frame_load_cap", "skip_first_frames", "select_every_nth"]
    assert list(video["optional"]) == ["sequence_fps"]
    assert video["required"]["video"][1]["video_upload"] is True
    image = nodes["PVTTLoadImage"].INPUT_TYPES()["required"]
    assert list(image) == ["image"] and image["image"][1]["image_upload"] is True
    assert nodes["PVTTLoadVideo"].RETURN_TYPES[:4] == ("IMAGE", "MASK", "INT", "FLOAT")  # saved links by index
    assert nodes["PVTTLoadVideo"].RETURN_TYPES[4:] == ("VIDEO", "AUDIO")
    assert len(nodes["PVTTLoadVideo"].OUTPUT_TOOLTIPS) == 6


def test_uploaded_files_in_subfolders_and_annotated_names_resolve(folders, monkeypatch):
    (folders / "input" / "pasted").mkdir()
    Image.new("RGB", (6, 4), (255, 0, 0)).save(folders / "input" / "pasted" / "photo.png")
    (folders / "output").mkdir()
    Image.new("RGB", (6, 4), (0, 0, 255)).save(folders / "output" / "render.png")
    assert paths.resolve_media("pasted/photo.png") == (folders / "input" / "pasted" / "photo.png").resolve()
    assert paths.resolve_media("pasted/photo.png [input]") == paths.resolve_media("pasted/photo.png")
    assert paths.resolve_media("render.png [output]") == (folders / "output" / "render.png").resolve()
    assert nodes["PVTTLoadImage"].VALIDATE_INPUTS("pasted/photo.png") is True
    assert run("PVTTLoadImage", image="pasted/photo.png")[0][0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert run("PVTTLoadImage", image="render.png [output]")[0][0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert paths.resolve_media(PRODUCT).parent == paths.SAMPLES_DIR.resolve()  # samples/ listed as today
    assert PRODUCT in nodes["PVTTLoadImage"].INPUT_TYPES()["required"]["image"][0]


@pytest.mark.parametrize("name", ["pasted/../../secret.png", "../secret.png", ".hidden/photo.png",
                                  "pasted/.photo.png", "/etc/passwd", "pasted", "nope.png [input]",
                                  "../secret.png [output]"])
def test_names_that_leave_the_folders_or_are_hidden_are_refused(folders, name):
    (folders / "input" / "pasted").mkdir()
    (folders / "input" / ".hidden").mkdir()
    for where in (folders / "secret.png", folders / "input" / ".hidden" / "photo.png",
                  folders / "input" / "pasted" / ".photo.png"):
        Image.new("RGB", (2, 2)).save(where)
    assert isinstance(nodes["PVTTLoadImage"].VALIDATE_INPUTS(name), str)
    with pytest.raises(FileNotFoundError, match="upload"):
        paths.resolve_media(name)


def test_folder_paths_annotations_are_used_inside_comfyui(folders, monkeypatch):
    """Inside ComfyUI the annotation is read by ComfyUI's own folder_paths.annotated_filepath."""
    import sys
    import types

    temp = folders / "comfy_temp"
    temp.mkdir()
    Image.new("RGB", (2, 2)).save(temp / "mask.png")
    fake = types.SimpleNamespace(
        annotated_filepath=lambda n: (n[:-7], str(temp)) if n.endswith("[temp]") else (n, None),
        get_input_directory=lambda: str(folders / "input"), get_output_directory=lambda: str(folders / "output"))
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert paths.resolve_media("mask.png [temp]") == (temp / "mask.png").resolve()


# --- Load Video: VIDEO and AUDIO outputs -------------------------------------------------------------

def test_load_video_returns_core_video_and_the_sound_of_the_loaded_span(folders):
    frames = (clip(16, 32, 32).numpy() * 255).astype(np.uint8)
    av_io.write_mp4(folders / "input" / "voiced.mp4", frames, 8.0, tone(2.0, hz=441.0))
    image, _, count, fps, video, audio = run("PVTTLoadVideo", video="voiced.mp4", frame_load_cap=0,
                                             skip_first_frames=0, select_every_nth=1)
    assert count == 16 and audio["sample_rate"] == 44100 and audio["waveform"].shape[:2] == (1, 2)
    assert audio["waveform"].shape[-1] / 44100 == pytest.approx(2.0, abs=0.03)
    parts = video.get_components()
    assert torch.equal(parts.images, image) and float(parts.frame_rate) == pytest.approx(8.0)
    assert parts.audio is audio and video.get_dimensions() == (32, 32)
    # 4 frames skipped, every 2nd kept, 4 kept: 0.5 s .. 1.5 s of the file
    _, _, count, fps, _, cut = run("PVTTLoadVideo", video="voiced.mp4", frame_load_cap=4, skip_first_frames=4,
                                   select_every_nth=2)
    assert count == 4 and fps == pytest.approx(4.0)
    assert cut["waveform"].shape[-1] / 44100 == pytest.approx(1.0, abs=0.002)
    # 441 Hz: 220.5 cycles in 0.5 s, so a cut at the wrong place (the file's start) is the tone's negative
    n = np.arange(2000) / 44100
    got = cut["waveform"][0, 0, :2000].numpy()
    right, wrong = 0.5 * np.sin(2 * np.pi * 441 * (0.5 + n)), 0.5 * np.sin(2 * np.pi * 441 * n)
    assert np.abs(got - right).mean() < 0.02 < 0.3 < np.abs(got - wrong).mean(), (np.abs(got - right).mean(),
                                                                                 np.abs(got - wrong).mean())


def test_load_video_of_a_silent_file_gives_no_audio(folders):
    *_, video, audio = run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=0, skip_first_frames=0,
                           select_every_nth=1)
    assert audio is None and video.get_components().images.shape == (9, 128, 128, 3)


# --- Template Transfer / Background Preserve: IMAGE or VIDEO -------------------------------------------

@pytest.fixture
def transfer_inputs(folders):
    model = run("PVTTLoadModel", model_name=TINY_NAME)[0]
    template, _, _, fps, video, _ = run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=0, skip_first_frames=0,
                                        select_every_nth=1)
    mask = run("PVTTLoadVideo", video=MASK, frame_load_cap=0, skip_first_frames=0, select_every_nth=1)[1]
    product = run("PVTTLoadImage", image=PRODUCT)[0]
    return model, template, video, mask, product


def test_template_transfer_gives_the_same_clip_from_image_or_video(transfer_inputs):
    model, template, video, mask, product = transfer_inputs
    common = {"model": model, "mask": mask, "product_image": product, "steps": 0, "seed": 3,
              "preserve_background": True}
    from_image = outputs(run("PVTTTemplateTransfer", template_video=template, **common))[0]
    from_video = outputs(run("PVTTTemplateTransfer", template_core_video=video, **common))[0]
    from_core = outputs(run("PVTTTemplateTransfer", template_core_video=core_video.make_video(template, 8.0),
                            **common))[0]
    assert from_image.shape == template.shape and torch.equal(from_image, from_video)
    assert torch.equal(from_image, from_core)
    kept = run("PVTTBackgroundPreserve", generated=from_image, template_video=template, mask=mask, dilate_px=2,
               feather_px=1.0)
    kept_video = run("PVTTBackgroundPreserve", generated=from_image, template_core_video=video, mask=mask,
                     dilate_px=2, feather_px=1.0)
    assert all(torch.equal(a, b) for a, b in zip(kept, kept_video))


@pytest.mark.parametrize("node", ["PVTTTemplateTransfer", "PVTTBackgroundPreserve"])
def test_template_from_neither_or_both_sockets_is_refused(transfer_inputs, node):
    model, template, video, mask, product = transfer_inputs
    inputs = ({"model": model, "mask": mask, "product_image": product, "steps": 0, "seed": 0,
               "preserve_background": True} if node == "PVTTTemplateTransfer" else
              {"generated": template, "mask": mask, "dilate_px": 2, "feather_px": 1.0})
    with pytest.raises(errors.InputError, match="connect template_video .* or template_core_video"):
        run(node, **inputs)
    with pytest.raises(errors.InputError, match="both template_video and template_core_video"):
        run(node, template_video=template, template_core_video=video, **inputs)
    with pytest.raises(errors.InputError, match="must be a core ComfyUI VIDEO"):
        run(node, template_core_video=template, **inputs)


def test_template_sockets_are_optional_and_appended(folders):
    for node in ("PVTTTemplateTransfer", "PVTTBackgroundPreserve"):
        schema = nodes[node].INPUT_TYPES()
        assert "template_video" not in schema["required"]
        optional = [k for k in schema["optional"] if k != "fit"]  # fit: Template Transfer's last widget
        assert optional[-2:] == ["template_video", "template_core_video"]
        assert schema["optional"]["template_core_video"][0] == "VIDEO"
        assert all(spec[1].get("tooltip") for group in schema.values() for spec in group.values())
    assert list(nodes["PVTTSaveVideo"].INPUT_TYPES()["optional"]) == ["preview_format", "audio", "frames_per_clip"]


def test_made_video_saves_itself_like_core_video(tmp_path):
    video = core_video.make_video(clip(4), 4.0, tone(1.0))
    video.save_to(str(tmp_path / "v.mp4"), metadata={"workflow": WORKFLOW})
    info = probe(tmp_path / "v.mp4")
    assert info["frames"] == 4 and info["audio"] == [("aac", 44100, 2)]
    assert json.loads(info["metadata"]["workflow"]) == WORKFLOW and math.isclose(video.get_duration(), 1.0)
