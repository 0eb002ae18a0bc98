"""Many products against one template: one clip per photo, overall progress, Cancel between clips,
Background Preserve against the one template, and Save Video's numbered set."""

from __future__ import annotations

import importlib

import pytest
import torch
from _comfy_pack import PACKAGE
from _node_fixtures import folders, model, models_dir, outputs, run, sample_inputs  # noqa: F401

from pvtt_train.media import video_io

sampling_nodes = importlib.import_module(f"{PACKAGE}.nodes.sampling_nodes")
pipeline = importlib.import_module(f"{PACKAGE}.pvtt_train.pipeline")
product_batch = importlib.import_module(f"{PACKAGE}.pvtt_train.product_batch")
render_products, repeat_per_clip, split_clips = (product_batch.render_products, product_batch.repeat_per_clip,
                                                 product_batch.split_clips)
InputError = pipeline.InputError  # the pack's own class, as the nodes raise it


class Interrupted(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


def photos(product, n=3):
    """n different product photos: the sample photo with its product recoloured."""
    out = [product]
    for k in range(1, n):
        shifted = product.clone()
        shifted[..., k % 3] = shifted[..., k % 3] * 0.4
        out.append(shifted)
    return torch.cat(out)


def transfer(model, template, mask, product, **overrides):
    return run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask, product_image=product,
               steps=0, seed=0, preserve_background=True, **overrides)


# --- the pure parts -------------------------------------------------------------------------------

def test_render_products_calls_render_per_photo_and_concatenates():
    seen = []
    clips, per_clip = render_products(lambda photo, k: seen.append(k) or torch.full((4, 2, 2, 3), float(k)),
                                      [torch.zeros(2, 2, 3)] * 3)
    assert seen == [0, 1, 2] and per_clip == 4 and clips.shape == (12, 2, 2, 3)
    assert [float(c.mean()) for c in clips.split(4)] == [0.0, 1.0, 2.0]


def test_cancel_before_a_clip_stops_the_batch():
    rendered, checks = [], []

    def check():
        checks.append(1)
        if len(checks) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        render_products(lambda photo, k: rendered.append(k) or torch.zeros(1, 1, 1, 3), [torch.zeros(1, 1, 3)] * 3,
                        check_cancel=check)
    assert rendered == [0]


def test_split_and_repeat_per_clip():
    frames = torch.arange(12.0).view(12, 1, 1, 1)
    assert [c.flatten().tolist() for c in split_clips(frames, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert len(split_clips(frames, 0)) == 1 and len(split_clips(frames, 12)) == 1
    with pytest.raises(InputError, match="12 frames, which is not a whole number of 5-frame clips"):
        split_clips(frames, 5)
    assert repeat_per_clip(torch.arange(3.0), 9).tolist() == [0, 1, 2] * 3
    assert repeat_per_clip(torch.arange(3.0), 7).tolist() == [0, 1, 2]  # not a multiple: left alone


# --- PVTT Template Transfer -----------------------------------------------------------------------

def test_a_batch_of_3_photos_gives_3_clips_and_frames_per_clip(model, sample_inputs):
    template, mask, product = sample_inputs
    batch = photos(product)
    out = transfer(model, template, mask, batch)
    video, per_clip = out["result"]
    assert per_clip == template.shape[0] == 9 and video.shape == (27, *template.shape[1:])
    for k in range(3):  # each clip is exactly what that photo alone gives (same seed)
        alone = outputs(transfer(model, template, mask, batch[k: k + 1]))
        assert alone[1] == 9 and torch.equal(video[9 * k: 9 * (k + 1)], alone[0])
    assert not torch.equal(video[:9], video[9:18])  # the products differ, so the clips do
    assert "3 product photos give 3 clips of 9 frames" in out["ui"]["text"][0]


def test_progress_runs_across_all_clips(model, sample_inputs, monkeypatch):
    template, mask, product = sample_inputs
    calls = []

    class Bar:
        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total))

    monkeypatch.setattr(sampling_nodes, "progress_bar", lambda total: Bar())
    transfer(model, template, mask, photos(product))
    assert calls == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]  # 2 steps x 3 clips, never back to 0


def test_cancel_between_clips_stops_the_batch(model, sample_inputs, monkeypatch):
    template, mask, product = sample_inputs
    finished, pressed = [], []

    def check():
        if pressed:
            raise Interrupted

    real = pipeline.transfer

    def transfer_then_press_cancel(*args, **kwargs):
        clip = real(*args, **kwargs)
        finished.append(1)
        pressed.append(1)  # Cancel pressed as clip 1 finishes: clip 2 must not start
        return clip

    monkeypatch.setattr(sampling_nodes, "check_interrupted", check)
    monkeypatch.setattr(pipeline, "transfer", transfer_then_press_cancel)
    with pytest.raises(Interrupted):
        transfer(model, template, mask, photos(product))
    assert finished == [1]


def test_a_bad_photo_in_the_batch_is_refused_before_any_clip(model, sample_inputs, monkeypatch):
    template, mask, product = sample_inputs
    started = []
    monkeypatch.setattr(pipeline, "transfer", lambda *a, **k: started.append(1))
    batch = torch.cat([product, product, torch.full_like(product, 0.5)])
    with pytest.raises(InputError, match="product image 3 of 3 is a single flat colour"):
        transfer(model, template, mask, batch)
    assert started == []


def test_the_node_shows_its_working_size(model, sample_inputs):
    template, mask, product = sample_inputs
    out = transfer(model, template, mask, product)
    height, width = template.shape[1:3]
    text = out["ui"]["text"][0]
    assert text.startswith("working size 16x16, 9-frame windows overlapping 3; ")
    assert f"your {width}x{height} clip" in text and "9 frames in 1 window" in text
    assert out["result"][1] == 9


def test_a_clip_far_larger_than_the_working_size_is_told_what_the_output_will_be(model, sample_inputs):
    template, mask, product = sample_inputs
    big = torch.nn.functional.interpolate(template.permute(0, 3, 1, 2), size=(256, 256)).permute(0, 2, 3, 1)
    big_mask = torch.nn.functional.interpolate(mask[:, None], size=(256, 256))[:, 0]
    text = transfer(model, big, big_mask, product)["ui"]["text"][0]
    assert "your 256x256 clip is rendered at 16x16 and upscaled 16x" in text
    assert "the output is 256x256, but each of the model's pixels covers about 16x16 of its pixels" in text
    assert "expect a soft product" in text


# --- PVTT Background Preserve and Save Video ------------------------------------------------------

def test_background_preserve_keeps_the_one_template_outside_the_mask_in_every_clip(sample_inputs):
    template, mask, _ = sample_inputs
    generated = torch.rand(3 * template.shape[0], *template.shape[1:], generator=torch.Generator().manual_seed(1))
    video, soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                      dilate_px=0, feather_px=0.0)  # the defaults: the mask exactly
    assert video.shape == generated.shape and soft.shape == (27, *mask.shape[1:])
    outside = (mask <= 0.02)[..., None].expand_as(template)  # codec noise up to 0.02 counts as background
    for clip in video.split(9):
        assert torch.equal(clip[outside], template[outside])
    single, single_soft = run("PVTTBackgroundPreserve", generated=generated[9:18], template_video=template,
                              mask=mask, dilate_px=2, feather_px=1.0)
    grown, grown_soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                            dilate_px=2, feather_px=1.0)
    assert torch.equal(grown[9:18], single) and torch.equal(grown_soft[9:18], single_soft)
    single, single_soft = run("PVTTBackgroundPreserve", generated=generated[9:18], template_video=template,
                              mask=mask, dilate_px=0, feather_px=0.0)
    assert torch.equal(video[9:18], single) and torch.equal(soft[9:18], single_soft)


def test_background_preserve_still_refuses_a_clip_that_is_not_whole_clips(sample_inputs):
    template, mask, _ = sample_inputs
    with pytest.raises(InputError, match="differ in shape"):
        run("PVTTBackgroundPreserve", generated=template[:7].repeat(2, 1, 1, 1), template_video=template, mask=mask,
            dilate_px=2, feather_px=1.0)


def save(images, **extra):
    return run("PVTTSaveVideo", images=images, filename_prefix="PVTT/batch", fps=8.0, **extra)


def test_save_video_writes_a_numbered_set_one_file_per_clip(folders):
    clips = torch.cat([torch.full((4, 16, 16, 3), v) for v in (0.2, 0.5, 0.8)])
    ui = save(clips, frames_per_clip=4)["ui"]
    names = [entry["filename"] for entry in ui["images"]]
    assert names == ["batch_00001.webp", "batch_00002.webp", "batch_00003.webp"]
    files = sorted((folders / "output" / "PVTT").glob("batch_*.mp4"))
    assert [f.name for f in files] == ["batch_00001.mp4", "batch_00002.mp4", "batch_00003.mp4"]
    for path, level in zip(files, (0.2, 0.5, 0.8)):
        frames, _ = video_io.read_video(path)
        assert frames.shape[0] == 4 and abs(frames.mean() / 255 - level) < 0.03


def test_save_video_without_frames_per_clip_saves_one_file(folders):
    save(torch.rand(6, 16, 16, 3))
    assert [f.name for f in (folders / "output" / "PVTT").glob("batch_*.mp4")] == ["batch_00001.mp4"]


def test_save_video_refuses_frames_that_are_not_whole_clips_before_writing(folders):
    with pytest.raises(InputError, match="not a whole number of 4-frame clips"):
        save(torch.rand(6, 16, 16, 3), frames_per_clip=4)
    assert not list((folders / "output").rglob("*.mp4"))


def test_frames_per_clip_is_an_appended_optional_socket():
    schema = importlib.import_module(f"{PACKAGE}.nodes.media_nodes").PVTTSaveVideo.INPUT_TYPES()
    assert list(schema["required"]) == ["images", "filename_prefix", "fps"]
    assert list(schema["optional"])[-1] == "frames_per_clip"
    spec = schema["optional"]["frames_per_clip"]
    assert spec[0] == "INT" and spec[1]["forceInput"] and spec[1]["tooltip"]
    node = sampling_nodes.PVTTTemplateTransfer
    assert node.RETURN_TYPES == ("IMAGE", "INT") and node.RETURN_NAMES == ("generated", "frames_per_clip")
