"""WanVACEPVTT and its loaders, on a tiny random Wan 2.1 VACE model saved as a diffusers folder."""

from __future__ import annotations

import copy
import json
import logging
import shutil

import pytest
import torch

from _wan_fixtures import TEXT_DIM, TRANSFORMER_CONFIG, designer_inputs, make_wan_vace_folder
from diffusers import AutoencoderKLWan, WanVACETransformer3DModel
from safetensors.torch import load_file
from pvtt_train.models.checkpoint import CheckpointError, load_checkpoint
from pvtt_train.models.loading import DEFAULT_SAMPLER, DEFAULT_VIDEO, export_single_file, load_model
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.models.wan_vace import WanVACEPVTT, reference_canvas
from pvtt_train.pipeline import transfer
from pvtt_train.sampling.samplers import sample_from_metadata, sample_student, sample_teacher


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return make_wan_vace_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-VACE-tiny-diffusers")


@pytest.fixture(scope="module")
def loaded(wan_folder):
    return load_model(wan_folder)


@pytest.fixture(scope="module")
def inputs():
    template, mask, reference = designer_inputs()
    return template[None], mask[None], reference[None]


@pytest.fixture(scope="module")
def cond(loaded, inputs):
    return loaded.model.condition(*inputs)


def test_folder_loads_with_checkpoint_metadata(wan_folder, loaded):
    meta = loaded.metadata
    assert isinstance(loaded.model, WanVACEPVTT)
    assert meta["model"]["arch"] == "wan_vace" and meta["stage"] == "teacher"
    assert meta["schedule"] == {"shift": 3.0, "num_train_timesteps": 1000}
    assert meta["sampler"] == DEFAULT_SAMPLER
    assert meta["video"] == {"frames": 9, "height": 32, "width": 32}  # from pvtt.json
    assert meta["provenance"]["path"] == str(wan_folder.resolve())
    assert meta["provenance"]["context"] == "prompt_embeds.safetensors"
    stored = load_file(str(wan_folder / "prompt_embeds.safetensors"))["prompt_embeds"]
    assert torch.equal(loaded.model.context, stored)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_folder_without_extras_uses_zero_context_and_wan_defaults(tmp_path, caplog):
    folder = make_wan_vace_folder(tmp_path / "plain", prompt_embeds=False, clip=None)
    # Wan's 81x480x832 clip is 22x60x104 patches for the tiny VAE; the tiny transformer's 32 rotary positions per
    # axis cannot address it, so the folder would be refused. Rotary tables are not weights: widen them.
    _edit_json(folder / "transformer" / "config.json", rope_max_seq_len=128)
    with caplog.at_level(logging.INFO, logger="pvtt_train.models.loading"):
        loaded = load_model(folder)
    assert torch.equal(loaded.model.context, torch.zeros(1, 1, TEXT_DIM))
    assert loaded.metadata["provenance"]["context"] == "zeros"
    assert "zeros" in caplog.text
    assert loaded.video == DEFAULT_VIDEO


def test_encode_decode_normalise_with_vae_statistics(loaded, inputs):
    model, template = loaded.model, inputs[0]
    latents = model.encode(template)
    assert latents.shape == (1, 4, 3, 8, 8) and latents.dtype == torch.float32
    raw = model.vae.encode(template.permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    mean = torch.tensor(model.vae.config.latents_mean).view(1, 4, 1, 1, 1)
    std = torch.tensor(model.vae.config.latents_std).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(latents, (raw - mean) / std)
    video = model.decode(latents)
    assert video.shape == template.shape and video.min() >= 0 and video.max() <= 1
    # Normalisation cancels: decode(encode(x)) is the VAE's own reconstruction.
    direct = ((model.vae.decode(raw).sample.permute(0, 2, 3, 4, 1) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(video, direct, atol=1e-5, rtol=1e-5)


def test_clip_shapes_the_vae_cannot_take_are_refused(loaded, inputs):
    with pytest.raises(ValueError, match=r"1 \+ 4\*k frames; got 8. Use 5 or 9"):
        loaded.model.encode(inputs[0][:, :8])
    with pytest.raises(ValueError, match="multiple of 8x8"):
        loaded.model.condition(inputs[0][:, :, :28], inputs[1][:, :, :28], inputs[2])


def test_condition_layout_follows_vace(loaded, inputs, cond):
    model = loaded.model
    template, mask, reference = inputs
    torch.testing.assert_close(cond.background, model.encode(template))
    assert cond.region.shape == (1, 1, 3, 8, 8)
    # control: [inactive 4, reactive 4, packed mask 16] x [reference frame + 3 latent frames]
    assert cond.features.shape == (1, 24, 4, 8, 8) and cond.reference_slice == slice(0, 1)
    canvas = reference_canvas(reference, 32, 32)
    assert torch.all(canvas[..., :4] == 1) and torch.all(canvas[..., -4:] == 1)  # 16 wide photo, centred on white
    torch.testing.assert_close(cond.features[:, :4, :1], model._encode(canvas[:, :, None]))
    assert torch.all(cond.features[:, 4:, 0] == 0)  # no reactive latent, no mask for the reference frame
    video = template.permute(0, 4, 1, 2, 3) * 2 - 1
    m = mask[:, None]
    torch.testing.assert_close(cond.features[:, :4, 1:], model._encode(video * (1 - m)))
    torch.testing.assert_close(cond.features[:, 4:8, 1:], model._encode(video * m))


def test_mask_packing_and_region_at_latent_resolution(loaded, inputs):
    model = loaded.model
    template, _, reference = inputs
    static = torch.zeros(1, 9, 32, 32)
    static[:, :, 5:14, 9:19] = 1
    packed = model.condition(template, static, reference).features[0, 8:, 1:]  # [16, 3, 8, 8]
    for sy in range(4):
        for sx in range(4):
            assert torch.equal(packed[sy * 4 + sx], static[0, :3, sy::4, sx::4])
    # Region: a latent cell is regenerated if any pixel of its block and causal frame group is masked.
    only_frame_5 = torch.zeros(1, 9, 32, 32)
    only_frame_5[:, 5, 5:14, 9:19] = 1
    region = model.condition(template, only_frame_5, reference).region[0, 0]
    assert region[0].sum() == 0 and region[1].sum() == 0  # frame 0 alone; frames 1-4
    expected = torch.zeros(8, 8)
    expected[1:4, 2:5] = 1  # rows 5..13 -> cells 1..3, columns 9..18 -> cells 2..4
    assert torch.equal(region[2], expected)  # frames 5-8


def test_velocity_uses_reference_only_in_the_conditional_branch(loaded, inputs, cond):
    model = loaded.model
    x = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.7])
    v = model.velocity(x, sigma, cond)
    v_uncond = model.velocity(x, sigma, cond, keep_reference=False)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert (v - v_uncond).abs().max() > 1e-3
    other = model.condition(inputs[0], inputs[1], 1 - inputs[2])
    assert (model.velocity(x, sigma, other) - v).abs().max() > 1e-3
    torch.testing.assert_close(model.velocity(x, sigma, other, keep_reference=False), v_uncond)
    # A mixed batch (as CFG and reference dropout use it) gives each sample its own branch.
    mixed = model.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), cond.repeat(2),
                           keep_reference=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(mixed, torch.cat([v_uncond, v]), atol=1e-5, rtol=1e-5)


def test_training_step_updates_transformer_and_context_never_the_vae(loaded, inputs):
    model = copy.deepcopy(loaded.model).train().requires_grad_(True)  # everything differentiable, to see the graph
    template, mask, reference = inputs
    cond = model.condition(template, mask, reference)
    x0 = model.encode(template.flip(1))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.5])
    v = model.velocity(FlowSchedule.noise(x0, noise, sigma), sigma, cond, keep_reference=torch.tensor([1.0]))
    ((v - (noise - x0)) ** 2 * (1 + cond.region)).mean().backward()
    assert model.context.grad is not None and model.context.grad.abs().sum() > 0
    assert model.transformer.vace_patch_embedding.weight.grad.abs().sum() > 0  # the control is used
    assert all(p.grad is None for p in model.vae.parameters())


def test_teacher_and_student_samplers_run_in_latent_space(loaded, cond):
    model, schedule = loaded.model, loaded.schedule

    def teacher(seed):
        return sample_teacher(model, cond, schedule, steps=3, cfg=2.0, generator=torch.Generator().manual_seed(seed))

    x0 = teacher(0)
    assert x0.shape == cond.background.shape and torch.isfinite(x0).all()
    assert torch.equal(x0, teacher(0)) and not torch.equal(x0, teacher(1))
    student = sample_student(model, cond, schedule, FlowSchedule(shift=3.0).student_sigmas((1000, 500)),
                             generator=torch.Generator().manual_seed(0))
    assert student.shape == cond.background.shape and torch.isfinite(student).all()
    from_meta = sample_from_metadata(model, cond, loaded.metadata, steps=2, generator=torch.Generator().manual_seed(0))
    video = model.decode(from_meta)
    assert video.shape == (1, 9, 32, 32, 3) and torch.isfinite(video).all()


def test_transfer_end_to_end_in_windows(loaded):
    template, mask, reference = designer_inputs(frames=13, height=40, width=48, seed=3)
    calls = []
    out = transfer(loaded, template, mask, reference, steps=2, seed=0, callback=lambda i, n, x0: calls.append((i, n)))
    assert out.shape == template.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 13 frames in two 9-frame windows, 2 steps each


def test_export_single_file_reloads_identically(loaded, cond, tmp_path):
    path = export_single_file(loaded, tmp_path / "wan_vace_tiny.safetensors")
    for reloaded in (load_checkpoint(path), load_model(path)):
        assert isinstance(reloaded.model, WanVACEPVTT)
        for key in ("schedule", "sampler", "video", "stage", "model"):
            assert reloaded.metadata[key] == loaded.metadata[key]
        assert reloaded.metadata["provenance"]["exported_from"] == str(loaded.path)
        assert torch.equal(reloaded.model.context, loaded.model.context)
        x = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(2))
        for keep in (True, False):
            assert torch.equal(reloaded.model.velocity(x, torch.tensor([0.4]), cond, keep),
                               loaded.model.velocity(x, torch.tensor([0.4]), cond, keep))
        assert torch.equal(reloaded.model.decode(cond.background), loaded.model.decode(cond.background))


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _pickle_weights(folder):
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), folder / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()


BROKEN_FOLDERS = {
    "no_index": (lambda f: (f / "model_index.json").unlink(), "has no model_index.json"),
    "plain_wan": (lambda f: _edit_json(f / "model_index.json", _class_name="WanPipeline"), "needs a WanVACEPipeline"),
    "no_vae": (lambda f: shutil.rmtree(f / "vae"), "has no vae/ subfolder"),
    "wrong_class": (lambda f: _edit_json(f / "transformer" / "config.json", _class_name="WanTransformer3DModel"),
                    "needs WanVACETransformer3DModel"),
    "pickle_weights": (_pickle_weights, r"pickle-format weights \(diffusion_pytorch_model.bin\)"),
    "bad_scheduler": (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler"),
                      "not a flow-matching scheduler"),
    "bad_clip": (lambda f: _edit_json(f / "pvtt.json", video={"frames": 8, "height": 32, "width": 32}),
                 "does not fit the model"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_broken_folders_are_refused_with_the_reason(wan_folder, tmp_path, case):
    folder = tmp_path / "broken"
    shutil.copytree(wan_folder, folder)
    breaks, message = BROKEN_FOLDERS[case]
    breaks(folder)
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


def test_pickle_checkpoint_file_is_refused_unopened(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="pickle-format file"):
        load_model(path)


def test_mismatched_vace_channels_are_refused():
    transformer = WanVACETransformer3DModel(**{**TRANSFORMER_CONFIG, "vace_in_channels": 20})
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                           temperal_downsample=[True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    with pytest.raises(ValueError, match=r"2\*4 \+ 4\*4 = 24 channels"):
        WanVACEPVTT(transformer, vae)


def test_control_matches_wan_vace_pipeline_helpers(loaded, inputs, cond):
    """The batched packing here must equal WanVACEPipeline's own (needs transformers installed)."""
    pytest.importorskip("transformers")
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    model = loaded.model
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=model.vae, transformer=model.transformer,
                           scheduler=FlowMatchEulerDiscreteScheduler())
    template, mask, reference = inputs
    video = template.permute(0, 4, 1, 2, 3) * 2 - 1
    pixel_mask = mask[:, None]
    canvas = reference_canvas(reference, 32, 32)
    with torch.no_grad():
        latents = pipe.prepare_video_latents(video, pixel_mask, [[canvas[0]]], None, torch.device("cpu"))
        masks = pipe.prepare_masks(pixel_mask, [[canvas[0]]], None)
    torch.testing.assert_close(cond.features, torch.cat([latents, masks], dim=1))
