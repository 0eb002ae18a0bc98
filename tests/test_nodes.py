"""The PVTT nodes without ComfyUI: schemas, and every node executed the way ComfyUI would call it.

The model is a random-weights tiny WanConcatPVTT with a 2-step sampler: fast, and enough to check
shapes, ranges, determinism, progress, Cancel and background preservation (none of which depend
on trained weights).
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _comfy_pack import PACKAGE, ROOT
from _node_fixtures import (
    MASK,
    TEMPLATE,
    TINY_NAME,
    checkpoint,
    nodes,
    outputs,
    pack,
    paths,
    run,
)
from PIL import Image

from pvtt_train.bench import psnr

sampling_nodes = importlib.import_module(f"{PACKAGE}.nodes.sampling_nodes")
model_nodes = importlib.import_module(f"{PACKAGE}.nodes.model_nodes")
compare_nodes = importlib.import_module(f"{PACKAGE}.nodes.compare_nodes")
pipeline = importlib.import_module(f"{PACKAGE}.pvtt_train.pipeline")

CATEGORIES = {"PVTT/loaders", "PVTT/sampling", "PVTT/masking", "PVTT/video", "PVTT/acceleration"}


def transfer(model, inputs, **overrides):
    template, mask, product = inputs
    kwargs = {"model": model, "template_video": template, "mask": mask, "product_image": product, "steps": 0,
              "seed": 0, "preserve_background": True}
    return outputs(run("PVTTTemplateTransfer", **{**kwargs, **overrides}))[0]


# --- schemas -----------------------------------------------------------------------------------

def test_node_ids_are_prefixed_and_have_display_names():
    assert set(nodes) == {"PVTTLoadModel", "PVTTLoadVideo", "PVTTLoadImage", "PVTTSaveVideo",
                          "PVTTTemplateTransfer", "PVTTBackgroundPreserve", "PVTTAccelerate", "PVTTOnnxRuntime",
                          "PVTTTensorRT", "PVTTCompareModels", "PVTTMaskFromBox", "PVTTMaskGrow", "PVTTMaskPreview",
                          "PVTTMatchMask", "PVTTStudentSigmas", "PVTTFewStepSampler", "PVTTVACEConditioning"}
    assert all(pack.NODE_DISPLAY_NAME_MAPPINGS[n].startswith("PVTT ") for n in nodes)
    assert pack.WEB_DIRECTORY == "./web"


@pytest.mark.parametrize("node_id", sorted(nodes))
def test_node_has_category_description_and_output_tooltips(node_id):
    cls = nodes[node_id]
    assert cls.CATEGORY in CATEGORIES
    assert len(cls.DESCRIPTION) > 40
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES)
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)


@pytest.mark.parametrize("node_id", sorted(nodes))
def test_every_input_has_a_tooltip(node_id, folders):
    schema = nodes[node_id].INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in schema.get(section, {}).items():
            assert len(spec) == 2 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


@pytest.mark.parametrize("node_id", sorted(nodes))
def test_node_has_a_help_page(node_id):
    page = ROOT / "web" / "docs" / f"{node_id}.md"
    assert page.read_text().startswith(f"# {pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]}\n")


#: pvtt_train modules the pack may import at start-up: standard library only (error classes, path names).
LIGHT_PVTT_TRAIN = {"pvtt_pack.pvtt_train", "pvtt_pack.pvtt_train.errors", "pvtt_pack.pvtt_train.paths"}


def test_importing_the_pack_loads_neither_torch_nor_the_pvtt_train_stack():
    code = ("import sys; sys.path.insert(0, 'tests'); from _comfy_pack import load_pack; load_pack(); "
            f"light = {sorted(LIGHT_PVTT_TRAIN)!r}; "
            "heavy = [m for m in sys.modules if m in ('torch', 'cv2', 'diffusers') "
            "or (m.startswith('pvtt_pack.pvtt_train') and m not in light)]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- PVTT Load Model ---------------------------------------------------------------------------

def test_load_model_lists_checkpoints_in_the_models_folder(folders):
    assert nodes["PVTTLoadModel"].INPUT_TYPES()["required"]["model_name"][0] == [TINY_NAME]


def test_load_model_rebuilds_the_model_from_metadata(model):
    assert model.sampler == {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]}
    assert model.video == {"frames": 9, "height": 16, "width": 16}


def test_load_model_reuses_the_loaded_model_until_the_file_changes(folders, models_dir):
    first = run("PVTTLoadModel", model_name=TINY_NAME)[0]
    assert run("PVTTLoadModel", model_name=TINY_NAME)[0] is first
    path = models_dir / TINY_NAME
    stat = path.stat()
    try:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert run("PVTTLoadModel", model_name=TINY_NAME)[0] is not first
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_load_model_with_an_empty_folder_says_where_to_put_files(folders, monkeypatch):
    empty = folders / "empty_models"
    monkeypatch.setenv("PVTT_MODELS_DIR", str(empty))
    message = nodes["PVTTLoadModel"].VALIDATE_INPUTS("pvtt_student_4step.safetensors")
    assert str(empty) in message and "python -m pvtt_train demo" in message
    with pytest.raises(FileNotFoundError, match="python -m pvtt_train demo"):
        run("PVTTLoadModel", model_name="pvtt_student_4step.safetensors")


def test_load_model_lists_the_teacher_and_students_but_not_the_encoders(monkeypatch, folders):
    monkeypatch.setattr(paths, "SHIPPED_MODELS_DIR", ROOT / "models_shipped")
    names = paths.model_names()
    assert {"pvtt_teacher.safetensors", "pvtt_student_16step.safetensors", "pvtt_student_8step.safetensors",
            "pvtt_student_4step.safetensors"} <= set(names)
    assert not any("encoder" in name for name in names)


def test_load_model_refuses_a_file_without_pvtt_metadata(folders, models_dir, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("PVTT_MODELS_DIR", str(tmp_path))
    save_file({"w": torch.zeros(1)}, tmp_path / "foreign.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="no PVTT metadata"):
        run("PVTTLoadModel", model_name="foreign.safetensors")


# --- PVTT Load Video / Load Image --------------------------------------------------------------

def test_load_video_lists_input_files_and_shipped_samples(folders):
    (folders / "input" / "clip.mp4").write_bytes(b"")
    (folders / "input" / "notes.txt").write_bytes(b"")
    names = nodes["PVTTLoadVideo"].INPUT_TYPES()["required"]["video"][0]
    assert names[0] == "clip.mp4" and TEMPLATE in names and MASK in names and "notes.txt" not in names


def test_load_video_returns_frames_mask_count_and_fps(folders):
    frames, mask, count, fps = run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=0, skip_first_frames=0,
                                   select_every_nth=1)[:4]  # then VIDEO and AUDIO (test_media_av.py)
    assert frames.shape == (9, 128, 128, 3) and frames.dtype == torch.float32
    assert mask.shape == (9, 128, 128) and count == 9 and fps == pytest.approx(8.0)
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1


def test_load_video_of_a_mask_gives_a_binary_mask(sample_inputs):
    mask = sample_inputs[1]
    assert ((mask < 0.1) | (mask > 0.9)).float().mean() > 0.99
    assert 0.02 < float((mask > 0.5).float().mean()) < 0.5


def test_load_video_skips_caps_and_subsamples_frames(folders):
    full = run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=0, skip_first_frames=0, select_every_nth=1)[0]
    frames, _, count, fps = run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=3, skip_first_frames=1,
                                select_every_nth=2)[:4]
    assert count == 3 and fps == pytest.approx(4.0)
    assert torch.equal(frames, full[[1, 3, 5]])


def test_load_video_skipping_every_frame_raises_a_clear_error(folders):
    with pytest.raises(ValueError, match="Lower skip_first_frames"):
        run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=0, skip_first_frames=50, select_every_nth=1)


@pytest.mark.parametrize("name", ["../README.md", "samples/../pvtt_train/__init__.py", "/etc/passwd",
                                  "samples/make_samples.py/..", "missing.mp4"])
def test_load_video_resolves_only_files_in_input_or_samples(folders, name):
    assert isinstance(nodes["PVTTLoadVideo"].VALIDATE_INPUTS(name), str)
    with pytest.raises(FileNotFoundError, match="input folder"):
        run("PVTTLoadVideo", video=name, frame_load_cap=0, skip_first_frames=0, select_every_nth=1)


def test_load_image_returns_a_one_image_batch(sample_inputs):
    product = sample_inputs[2]
    assert product.shape == (1, 128, 128, 3) and float(product.max()) <= 1


def test_load_image_flattens_transparency_onto_white(folders):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(folders / "input" / "cutout.png")
    image = run("PVTTLoadImage", image="cutout.png")[0][0]
    assert image[0, 0].tolist() == [1.0, 1.0, 1.0] and image[3, 3].tolist() == [1.0, 0.0, 0.0]


# --- PVTT Save Video ---------------------------------------------------------------------------

def test_save_video_round_trips_through_load_video(folders, sample_inputs, monkeypatch):
    template = sample_inputs[0]
    result = run("PVTTSaveVideo", images=template, filename_prefix="PVTT/roundtrip", fps=8.0)
    assert result["ui"]["animated"] == (True,)
    (item,) = result["ui"]["images"]
    assert item == {"filename": "roundtrip_00001.webp", "subfolder": "PVTT", "type": "output"}
    saved = folders / "output" / "PVTT"
    assert Image.open(saved / item["filename"]).n_frames == 9
    monkeypatch.setenv("PVTT_INPUT_DIR", str(saved))
    frames, _, count, fps = run("PVTTLoadVideo", video="roundtrip_00001.mp4", frame_load_cap=0,
                                skip_first_frames=0, select_every_nth=1)[:4]
    assert count == 9 and fps == pytest.approx(8.0)
    assert float((frames - template).abs().mean()) < 0.03


def test_save_video_numbers_files_instead_of_overwriting(folders, sample_inputs):
    for _ in range(2):
        run("PVTTSaveVideo", images=sample_inputs[0][:2], filename_prefix="clip", fps=8.0)
    assert sorted(p.name for p in (folders / "output").glob("clip_*.mp4")) == ["clip_00001.mp4", "clip_00002.mp4"]


def test_save_video_refuses_a_prefix_outside_the_output_folder(folders, sample_inputs):
    with pytest.raises(ValueError, match="outside the output folder"):
        run("PVTTSaveVideo", images=sample_inputs[0], filename_prefix="../escape", fps=8.0)


# --- PVTT Template Transfer --------------------------------------------------------------------

def test_template_transfer_returns_a_clip_at_the_template_size(model, sample_inputs):
    out = transfer(model, sample_inputs)
    assert out.shape == sample_inputs[0].shape and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_template_transfer_is_deterministic_for_a_seed(model, sample_inputs):
    assert torch.equal(transfer(model, sample_inputs, seed=7), transfer(model, sample_inputs, seed=7))
    assert not torch.equal(transfer(model, sample_inputs, seed=7), transfer(model, sample_inputs, seed=8))


def test_template_transfer_reports_every_step_with_a_preview(model, sample_inputs, monkeypatch):
    calls = []

    class Bar:
        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total, preview[0], preview[1].size))

    monkeypatch.setattr(sampling_nodes, "progress_bar", lambda total: Bar())
    transfer(model, sample_inputs)
    assert [(v, t) for v, t, _, _ in calls] == [(1, 2), (2, 2)]
    assert all(kind == "JPEG" and size == (256, 256) for _, _, kind, size in calls)


def test_template_transfer_stops_when_cancelled(model, sample_inputs, monkeypatch):
    class Interrupted(Exception):
        pass

    def cancel():
        raise Interrupted

    monkeypatch.setattr(sampling_nodes, "check_interrupted", cancel)
    with pytest.raises(Interrupted):
        transfer(model, sample_inputs)


def test_template_transfer_warns_when_steps_differ_from_training(model, sample_inputs, caplog):
    with caplog.at_level(logging.WARNING, logger="[PVTT]"):
        transfer(model, sample_inputs, steps=3)
    assert "steps=3 differs from the 2 steps" in caplog.text


def test_template_transfer_rejects_a_mask_of_another_length(model, sample_inputs):
    template, mask, product = sample_inputs
    with pytest.raises(pipeline.InputError, match="mask has 4 frames but the template video has 9"):
        transfer(model, (template, mask[:4], product))


def test_template_transfer_rejects_an_empty_mask(model, sample_inputs):
    template, mask, product = sample_inputs
    with pytest.raises(pipeline.InputError, match="mask is empty"):
        transfer(model, (template, torch.zeros_like(mask), product))


def test_template_transfer_rejects_a_mask_where_a_product_image_belongs(model, sample_inputs):
    template, mask, _ = sample_inputs
    with pytest.raises(pipeline.InputError, match="product image has shape .* which is a MASK"):
        transfer(model, (template, mask, mask[:1]))


# --- PVTT Background Preserve ------------------------------------------------------------------

def test_background_preserve_keeps_the_template_exactly_outside_the_mask(model, sample_inputs):
    template, mask, _ = sample_inputs
    generated = transfer(model, sample_inputs)
    video, soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                      dilate_px=0, feather_px=0.0)  # the defaults
    outside = mask <= 0.02  # background, and the codec noise of an MP4 mask (FRINGE_FLOOR)
    assert torch.equal(video[outside], template[outside]) and (soft[outside] == 0).all()
    inside = mask >= 0.5
    assert inside.any() and (soft[inside] == 1).all()  # the whole product region, up to its edge: generated
    assert torch.equal(video[inside], generated[inside])


def test_background_preserve_accepts_a_single_mask_for_all_frames(model, sample_inputs):
    template, mask, _ = sample_inputs
    video, soft = run("PVTTBackgroundPreserve", generated=template.flip(-1), template_video=template,
                      mask=mask[:1], dilate_px=1, feather_px=1.0)
    assert video.shape == template.shape and soft.shape == mask.shape


def test_background_preserve_rejects_a_template_of_another_size(sample_inputs):
    template, mask, _ = sample_inputs
    with pytest.raises(pipeline.InputError, match="differ in shape"):
        run("PVTTBackgroundPreserve", generated=template[:, :64], template_video=template, mask=mask,
            dilate_px=2, feather_px=2.0)


# --- acceleration -------------------------------------------------------------------------------

def test_accelerate_bf16_transfers_like_the_eager_model(model, sample_inputs):
    fast = run("PVTTAccelerate", model=model, attention="auto", precision="bf16", compile="off", int8="off",
               token_merging=0.0)["result"][0]
    assert fast.metadata["acceleration"]["attention_used"] == "decomposed"
    assert psnr(transfer(fast, sample_inputs), transfer(model, sample_inputs)) > 40


def test_accelerate_leaves_the_loaders_cached_model_alone(model, sample_inputs):
    before = transfer(model, sample_inputs)
    run("PVTTAccelerate", model=model, attention="decomposed", precision="bf16", compile="off", int8="w8a16",
        token_merging=0.25)
    assert "acceleration" not in model.metadata
    assert torch.equal(transfer(model, sample_inputs), before)


def test_accelerating_an_accelerated_model_says_to_connect_the_loader(model):
    fast = run("PVTTAccelerate", model=model, attention="auto", precision="bf16", compile="off", int8="off",
               token_merging=0.0)["result"][0]
    with pytest.raises(ValueError, match="Connect it straight to PVTT Load Model"):
        run("PVTTOnnxRuntime", model=fast, batch_profile="auto")


def test_onnx_runtime_node_exports_into_models_onnx_and_matches_pytorch(model, sample_inputs, folders, models_dir):
    fast = run("PVTTOnnxRuntime", model=model, batch_profile="auto")[0]
    exported = list((models_dir.parent / "onnx" / "pvtt").glob("*.onnx"))
    assert len(exported) == 1 and fast.metadata["acceleration"]["onnx"] == str(exported[0])
    assert psnr(transfer(fast, sample_inputs), transfer(model, sample_inputs)) > 60


def test_tensorrt_node_without_cuda_names_the_fix_and_the_fallback(model):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: this checks the message on machines without it")
    engine = importlib.import_module(f"{PACKAGE}.pvtt_accel.tensorrt_engine")
    with pytest.raises(engine.TensorRTUnavailable) as err:
        run("PVTTTensorRT", model=model, precision="fp16", batch_profile="auto", workspace_gb=4.0)
    message = str(err.value)
    assert "CUDA" in message and "ONNX Runtime" in message


# --- compare ------------------------------------------------------------------------------------

def test_compare_models_puts_labelled_panels_side_by_side_with_timings(model, sample_inputs):
    template, mask, product = sample_inputs
    fast = run("PVTTAccelerate", model=model, attention="auto", precision="bf16", compile="off", int8="off",
               token_merging=0.0)["result"][0]
    grid, report = run("PVTTCompareModels", template_video=template, mask=mask, product_image=product, model_a=model,
                       seed=0, model_b=fast)
    frames, height, width, _ = template.shape
    assert grid.shape == (frames, height + compare_nodes.HEADER_PX, 2 * width, 3)
    alone = transfer(model, sample_inputs)
    assert torch.equal(grid[:, compare_nodes.HEADER_PX:, :width], alone)  # panel a is model_a's own output
    lines = report.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{TINY_NAME.removesuffix('.safetensors')}: 2 steps")
    assert "1.0x the speed of" in lines[0]


def test_compare_models_stops_when_cancelled(model, sample_inputs, monkeypatch):
    template, mask, product = sample_inputs

    def cancel():
        raise KeyboardInterrupt("cancelled")

    monkeypatch.setattr(compare_nodes, "check_interrupted", cancel)
    with pytest.raises(KeyboardInterrupt):
        run("PVTTCompareModels", template_video=template, mask=mask, product_image=product, model_a=model, seed=0)
