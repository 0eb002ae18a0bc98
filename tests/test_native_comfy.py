"""PVTT's 4-step students in a designer's native ComfyUI Wan graph: LoRA key formats, student sigmas, and
ComfyUI's own loaders on the exported files.

The ComfyUI checks run when ``COMFYUI_DIR`` is set (a ComfyUI checkout, or a comfyrig folder holding
``ComfyUI/`` and ``venv/``): ComfyUI's code runs in its own Python (``COMFYUI_PYTHON``, default the rig's
venv), through ``_comfy_native_probe.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from _comfy_env import comfy_paths
from _comfy_pack import ROOT
from _native_fixtures import (
    STUDENT_SHIFT,
    STUDENT_TIMESTEPS,
    Z16_VAE,
    comfy_shaped_model,
    full_wan21_vae,
    perturbed_student,
    save_pair,
)
from safetensors.torch import load_file, save_file

from pvtt_train.__main__ import main
from pvtt_train.errors import CheckpointError
from pvtt_train.models import lora_formats, native_wan
from pvtt_train.models.lora import apply_lora, load_lora
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.models.student_sigmas import read_student_sampling

RANK = 4
#: The SVDs of export-lora on tiny layers run several times faster on one thread than on two busy cores.
ONE_THREAD = ("--threads", "1")
EXPECTED_SIGMAS = [*FlowSchedule(STUDENT_SHIFT).student_sigmas(STUDENT_TIMESTEPS), 0.0]


needs_comfy = pytest.mark.skipif(comfy_paths() is None, reason="set COMFYUI_DIR to run ComfyUI's own loaders")


def probe(*args) -> dict:
    comfy, python = comfy_paths()
    script = Path(__file__).with_name("_comfy_native_probe.py")
    result = subprocess.run([python, str(script), str(comfy), *map(str, args)], capture_output=True, text=True,
                            timeout=900, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE "):])


@pytest.fixture(scope="module")
def teacher():
    """A tiny Wan-VACE in Wan 2.1's latent layout, so its transformer also runs on ComfyUI's Wan 2.1 VAE."""
    return comfy_shaped_model(vae_config=Z16_VAE)


@pytest.fixture(scope="module")
def files(tmp_path_factory, teacher):
    """Teacher and student checkpoints, the student's native export, and the LoRA in all three forms."""
    root = tmp_path_factory.mktemp("native")
    teacher_path, student_path = save_pair(root, teacher, perturbed_student(teacher))
    main([*ONE_THREAD, "export", "--model", str(student_path), "--format", "comfy",
          "--out", str(root / "student_native.safetensors")])
    for fmt in lora_formats.FORMATS:
        main([*ONE_THREAD, "export-lora", "--teacher", str(teacher_path), "--student", str(student_path),
              "--rank", str(RANK), "--format", fmt, "--out", str(root / f"lora_{fmt}.safetensors")])
    return root


@pytest.fixture(scope="module")
def teacher_native(files):
    path = files / "teacher_native.safetensors"
    main([*ONE_THREAD, "export", "--model", str(files / "teacher.safetensors"), "--format", "comfy",
          "--out", str(path)])
    return path


@pytest.fixture(scope="module")
def wan21_vae_file(files):
    """A random Wan 2.1 VAE in ComfyUI's layout and key names (VAELoader's hard-coded dim 96, z 16)."""
    vae = full_wan21_vae()
    path = files / "wan21_vae_random.safetensors"
    save_file(native_wan.vae_tensors(vae), str(path), metadata=native_wan.vae_header(vae))
    return path


def test_comfy_lora_keys_round_trip_bit_exact(files):
    pvtt, _ = load_lora(files / "lora_pvtt.safetensors")
    comfy, meta = load_lora(files / "lora_comfy.safetensors")
    assert all(k.startswith("diffusion_model.") for k in comfy)
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k in comfy if "lora" in k} == \
        {"lora_up.weight", "lora_down.weight"}
    assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in comfy
    assert "diffusion_model.head.modulation.diff" in comfy and "diffusion_model.blocks.1.self_attn.q.diff_b" in comfy
    assert all(float(v) == RANK for k, v in comfy.items() if k.endswith(".alpha"))
    back = lora_formats.to_pvtt_layout(comfy)
    assert back.keys() == pvtt.keys()
    assert all(torch.equal(back[k], pvtt[k]) for k in pvtt)
    assert meta["key_format"].startswith("comfyui")
    # ComfyUI's ModelPatcher never applies the modulation tables' .diff (see the ComfyUI test below): the
    # metadata lists exactly those entries and their share, and export-lora warns about them
    assert meta["comfy_unpatched"] == sorted(k for k in comfy if k.endswith("modulation.diff"))
    assert "diffusion_model.head.modulation.diff" in meta["comfy_unpatched"]
    assert 0 < meta["comfy_unpatched_share"] < 1


def test_diffusers_lora_has_only_lora_keys_its_wan_loader_accepts(files, teacher):
    from diffusers.loaders import WanLoraLoaderMixin

    state, meta = load_lora(files / "lora_diffusers.safetensors")
    assert state and all("lora" in k and k.startswith("transformer.") for k in state)
    accepted = WanLoraLoaderMixin.lora_state_dict(str(files / "lora_diffusers.safetensors"))
    assert accepted.keys() == state.keys()
    transformer = teacher.transformer
    for key in state:  # every key names a Linear/Conv layer of the Wan-VACE transformer
        module = transformer.get_submodule(key[len("transformer."):].rsplit(".", 2)[0])
        assert isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)), key
    assert meta["dropped"] and all(k.endswith((".diff", ".diff_b")) for k in meta["dropped"])
    assert 0 < meta["dropped_share"] < 1


@pytest.mark.parametrize("fmt", lora_formats.FORMATS)
def test_no_lora_form_holds_vae_keys_and_each_records_the_students_sampling(files, fmt):
    state, meta = load_lora(files / f"lora_{fmt}.safetensors")
    assert not any("vae" in k or "encoder." in k or "decoder." in k for k in state)
    assert meta["timesteps"] == STUDENT_TIMESTEPS and meta["shift"] == STUDENT_SHIFT


@pytest.mark.parametrize("name", ["student.safetensors", "student_native.safetensors", "lora_pvtt.safetensors",
                                  "lora_comfy.safetensors", "lora_diffusers.safetensors"])
def test_student_sigmas_come_from_every_form(files, name):
    sampling = read_student_sampling(files / name)
    assert sampling["sigmas"] == pytest.approx(EXPECTED_SIGMAS, abs=0)
    assert sampling["sigmas"][0] == 1.0 and sampling["sigmas"][-1] == 0.0


def test_a_teacher_has_no_student_sigmas(files):
    with pytest.raises(CheckpointError, match="not a few-step student"):
        read_student_sampling(files / "teacher.safetensors")


@needs_comfy
def test_comfyui_detects_the_export_as_wan_vace_and_patches_every_lora_weight(files, teacher_native):
    report = probe("lora", teacher_native, files / "lora_comfy.safetensors",
                   files / "patched.safetensors")
    assert report["model_class"] == "WAN21_Vace" and report["model_type"] == "vace"
    assert report["not_loaded"] == []
    pvtt, _ = load_lora(files / "lora_pvtt.safetensors")
    from pvtt_train.models.loading import load_model

    teacher = load_model(files / "teacher.safetensors").model
    merged = native_wan.transformer_tensors(apply_lora(teacher, pvtt).transformer)
    original = native_wan.transformer_tensors(teacher.transformer)
    intended = {k for k in merged if not torch.equal(merged[k], original[k])}
    assert set(report["patched"]) == intended
    patched = load_file(str(files / "patched.safetensors"))
    # ComfyUI's ModelPatcher.load patches only parameters of leaf modules (_load_list: "skip random weights in
    # non leaf modules"), so the .diff of a Wan block's or the head's own `modulation` table is registered but
    # never applied. Checked here so the day ComfyUI applies it, this test says so.
    skipped_by_comfy = {k for k in intended if k.endswith("modulation")}
    for key in intended - skipped_by_comfy:
        torch.testing.assert_close(patched[key], merged[key], atol=1e-6, rtol=1e-5, msg=key)
    for key in skipped_by_comfy:
        assert torch.equal(patched[key], original[key]), f"ComfyUI now applies {key}: drop skipped_by_comfy"


def graph_inputs(model, clip=(5, 32, 32)) -> dict:
    """A designer's inputs at a tiny clip size: template, mask (a box), a non-square product photo, a prompt
    embedding (CLIPTextEncode's output, UMT5-wide) and the student's sigmas."""
    frames, height, width = clip
    g = torch.Generator().manual_seed(4)
    mask = torch.zeros(frames, height, width)
    mask[:, 8:24, 4:20] = 1
    return {"template": torch.rand(frames, height, width, 3, generator=g), "mask": mask,
            "product": torch.rand(1, 24, 20, 3, generator=g),
            "context": 0.5 * torch.randn(1, 6, model.transformer.config.text_dim, generator=g)}


@needs_comfy
def test_native_graph_equals_pvtts_own_sampler_and_without_reinjection_comfyuis_lcm(files, wan21_vae_file):
    """Same files (the `export --format comfy` student, a Wan 2.1 VAE) and the same noise draws: ComfyUI's
    graph with the PVTT nodes gives PVTT's own 4-step result; with re-injection and the reference slot off
    the PVTT sampler is ComfyUI's lcm sampler."""
    from dataclasses import replace

    from pvtt_train.models.loading import load_model
    from pvtt_train.sampling.samplers import sample_student

    loaded = load_model(files / "student_native.safetensors", dtype=torch.float32, vae=wan21_vae_file)
    model = loaded.model
    given = graph_inputs(model)
    sigmas = read_student_sampling(files / "student_native.safetensors")["sigmas"]
    cond = model.condition(given["template"][None], given["mask"][None], given["product"])
    cond = replace(cond, context=given["context"])
    g = torch.Generator().manual_seed(11)  # PVTT's draws, in its order: initial noise, then one per step
    noises = torch.stack([torch.randn(cond.background.shape, generator=g) for _ in sigmas[:-1]])
    expected = sample_student(model, cond, FlowSchedule(**loaded.metadata["schedule"]), sigmas[:-1],
                              torch.Generator().manual_seed(11), preserve_background=True)
    save_file({**given, "noises": noises, "sigmas": torch.tensor(sigmas, dtype=torch.float32)},
              str(files / "graph_inputs.safetensors"))
    report = probe("graph", ROOT, files / "student_native.safetensors", wan21_vae_file,
                   files / "graph_inputs.safetensors", files / "graph_out.safetensors")
    got = load_file(str(files / "graph_out.safetensors"))
    assert report["trim"] == 1 and report["model_class"] == "WAN21_Vace"
    mean, std = model._latent_stats(expected)
    native = (got["native"] - mean) / std  # SamplerCustomAdvanced returns the raw VAE latent
    assert native.shape == expected.shape
    frames = model.decode(expected)[0]
    assert got["frames"].shape == frames.shape == (5, 32, 32, 3)
    latent_error, frame_error = (native - expected).abs().max(), (got["frames"] - frames).abs().max()
    print(f"native graph vs PVTT's sampler, max abs: latent {latent_error:.2e}, frames {frame_error:.2e}")
    assert latent_error < 1e-4 and frame_error < 1e-4
    assert got["lcm"].abs().max() > 0.1  # a sampled latent, not an empty one
    assert torch.equal(got["few_step_plain"], got["lcm"])


@needs_comfy
def test_the_workflow_lints_record_of_comfyuis_core_nodes_is_comfyuis():
    """tests/comfy_core_nodes.json (the schemas test_workflow_lint.py checks the native workflows against)
    is what this ComfyUI's core nodes declare: input names, order, types, dropdown values and outputs."""
    recorded = json.loads(Path(__file__).with_name("comfy_core_nodes.json").read_text())
    assert probe("core_schemas", *recorded) == recorded
