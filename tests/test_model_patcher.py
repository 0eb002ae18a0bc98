"""PVTT's models under ComfyUI's model management, and Template Transfer on ComfyUI's own loaded MODEL and VAE.

The ComfyUI checks run when ``COMFYUI_DIR`` is set (a comfyrig folder holding ``ComfyUI/`` and ``venv/``, or a
ComfyUI checkout): ComfyUI's code runs in its own Python (``COMFYUI_PYTHON``, default the rig's venv) through
``_comfy_patcher_probe.py``, on a tiny ComfyUI-native Wan-VACE student and a random Wan 2.1 VAE:

- PVTT Load Model's model is a ``ModelPatcher``-managed model on ComfyUI's devices; "Unload models" unloads it
  and the next run reloads it with the same output;
- the native MODEL path (UNETLoader + VAELoader + PVTT Student Sigmas) equals the PVTT_MODEL path on the same
  file and seed;
- the native path's weights are ComfyUI's tensors (same storage), not a float32 copy;
- a PVTT LoRA (export-lora --format comfy) applied by core LoraLoaderModelOnly is in the weights the native path
  samples with: the same clip as the LoRA merged by PVTT, unlike the base model without it.

The rest runs on the CPU without ComfyUI.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _comfy_env import comfy_paths
from _comfy_pack import ROOT, load_pack
from _native_fixtures import Z16_VAE, comfy_shaped_model, full_wan21_vae, perturbed_student, save_pair
from safetensors.torch import load_file, save_file

from pvtt_train.models import native_wan
from pvtt_train.models.checkpoint import LoadedModel

pack = load_pack()
nodes = pack.NODE_CLASS_MAPPINGS
managed = importlib.import_module(f"{pack.__name__}.nodes.managed_models")
native = importlib.import_module(f"{pack.__name__}.nodes.native_model")
InputError = importlib.import_module(f"{pack.__name__}.pvtt_train.errors").InputError  # the class the nodes raise


needs_comfy = pytest.mark.skipif(comfy_paths() is None, reason="set COMFYUI_DIR (a comfyrig folder or a ComfyUI "
                                                               "checkout) to run ComfyUI's model management")


def clip(frames=9, height=32, width=32):
    g = torch.Generator().manual_seed(4)
    mask = torch.zeros(frames, height, width)
    mask[:, 8:24, 4:20] = 1
    return {"template_video": torch.rand(frames, height, width, 3, generator=g), "mask": mask,
            "product_image": torch.rand(1, 24, 20, 3, generator=g)}


# --- without ComfyUI ------------------------------------------------------------------------------------------

def test_template_transfer_without_any_model_says_what_to_connect():
    with pytest.raises(InputError, match="no model connected.*PVTT Load Model.*'model'.*UNETLoader.*'native_model'"):
        nodes["PVTTTemplateTransfer"]().transfer(**clip(), steps=0, seed=0, preserve_background=True)


def test_model_is_an_optional_socket_and_the_native_sockets_are_appended():
    spec = nodes["PVTTTemplateTransfer"].INPUT_TYPES()
    assert "model" not in spec["required"]
    assert list(spec["required"]) == ["mask", "product_image", "steps", "seed", "preserve_background"]
    optional = list(spec["optional"])
    assert optional == ["prompt", "negative_prompt", "photo_detail",  # the widgets keep their order
                        "model", "native_model", "vae", "sigmas",
                        "template_video", "template_core_video",  # template_video: was required, now optional
                        "fit"]  # a widget appended after the sockets
    assert [spec["optional"][k][0] for k in ("model", "native_model", "vae", "sigmas")] == \
        ["PVTT_MODEL", "MODEL", "VAE", "SIGMAS"]
    assert all(spec["optional"][k][1].get("tooltip") for k in optional)


def test_a_native_model_without_its_vae_is_refused_before_anything_loads():
    fake = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(1, 1)))
    with pytest.raises(InputError, match="needs its VAE.*VAELoader"):
        nodes["PVTTTemplateTransfer"]().transfer(**clip(), steps=0, seed=0, preserve_background=True,
                                                 native_model=fake)


def test_something_that_is_not_a_diffusion_model_is_refused():
    with pytest.raises(InputError, match="not a ComfyUI diffusion MODEL"):
        nodes["PVTTTemplateTransfer"]().transfer(**clip(), steps=0, seed=0, preserve_background=True,
                                                 native_model=object(), vae=object())


def test_sigmas_select_the_few_step_sampler_at_exactly_those_sigmas():
    loaded = LoadedModel(model=torch.nn.Linear(1, 1), metadata={"sampler": {"kind": "euler_cfg", "steps": 50},
                                                                 "schedule": {"shift": 3.0}}, path=Path("m"))
    out = native.with_sigmas(loaded, torch.tensor([1.0, 0.9375, 0.625, 0.0]))
    from pvtt_train.models.schedule import FlowSchedule

    assert out.sampler["kind"] == "few_step" and out.sampler["steps"] == 3
    assert FlowSchedule(**out.metadata["schedule"]).student_sigmas(out.sampler["timesteps"]) == \
        pytest.approx([1.0, 0.9375, 0.625], abs=1e-12)
    assert loaded.sampler["kind"] == "euler_cfg"  # the input model is left as it was
    for bad in ([0.5, 0.9, 0.0], [1.5, 0.5, 0.0], [0.0]):
        with pytest.raises(InputError, match="sigmas must decrease"):
            native.with_sigmas(loaded, torch.tensor(bad))


@pytest.mark.parametrize("shape, expected", [((9, 32, 32), (9, 32, 32)), ((10, 100, 70), (9, 96, 64)),
                                             ((200, 1080, 1920), (81, 464, 832)), ((1, 8, 8), (1, 16, 16))])
def test_a_native_model_works_at_the_templates_size_on_wans_grid(shape, expected):
    vae = SimpleNamespace(config=SimpleNamespace(temperal_downsample=[False, True, True]))
    video = native.working_video(torch.zeros(*shape, 3), vae)
    assert (video["frames"], video["height"], video["width"]) == expected
    assert video["height"] * video["width"] <= native.MAX_AREA


class _NativeHolder:
    """ComfyUI's VaceWanModel / WanVAE as far as PVTT uses them: parameters under the native (ComfyUI) names."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in tensors.items()}

    def named_parameters(self):
        return iter(self.tensors.items())


def test_the_native_path_shares_comfyuis_tensors_and_computes_what_the_pvtt_model_computes():
    """Without ComfyUI: diffusers modules built on native-named tensors hold those very tensors (data_ptr), and
    the PVTT model around them gives the same velocity as the model they came from."""
    from pvtt_train.models.wan_vace import WanVACEPVTT

    source = comfy_shaped_model(vae_config=Z16_VAE)
    comfy_transformer = _NativeHolder(native_wan.transformer_tensors(source.transformer))
    comfy_vae = _NativeHolder(native_wan.vae_tensors(source.vae))
    transformer, vae = native.shared_transformer(comfy_transformer), native.shared_vae(comfy_vae)
    ptrs = {v.data_ptr() for holder in (comfy_transformer, comfy_vae) for v in holder.tensors.values()}
    weights = [*transformer.parameters(), *vae.parameters()]
    assert len(weights) == len(ptrs) and all(p.data_ptr() in ptrs for p in weights)
    built = WanVACEPVTT(transformer, vae).eval()
    inputs = clip(frames=5)
    cond = source.condition(inputs["template_video"][None], inputs["mask"][None], inputs["product_image"])
    cond_built = built.condition(inputs["template_video"][None], inputs["mask"][None], inputs["product_image"])
    x = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built.velocity(x, 0.5, cond_built), source.velocity(x, 0.5, cond))


def test_a_half_precision_or_fp8_native_model_is_refused_only_when_it_cannot_run():
    tensors = native_wan.transformer_tensors(comfy_shaped_model(vae_config=Z16_VAE).transformer)
    half = native.shared_transformer(_NativeHolder({k: v.half() for k, v in tensors.items()}))
    assert half.dtype == torch.float16
    with pytest.raises(InputError, match="float8.*weight_dtype 'default'"):
        native.shared_transformer(_NativeHolder({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}))
    no_vace = {k: v for k, v in tensors.items() if not k.startswith("vace")}
    with pytest.raises(InputError, match="without VACE"):
        native.shared_transformer(_NativeHolder(no_vace))


def test_only_the_patches_comfyui_left_out_of_its_weights_are_pending():
    """ComfyUI backs up each weight it patches on load; a patched key without a backup (a Wan block's own
    ``modulation``, which ModelPatcher.load skips) is the one PVTT has to apply itself."""
    model = SimpleNamespace(patches={"diffusion_model.blocks.0.modulation": ["m"],
                                     "diffusion_model.blocks.0.self_attn.q.weight": ["q"], "other.weight": ["o"]},
                            backup={"diffusion_model.blocks.0.self_attn.q.weight": "backed up"})
    assert native.pending_patches(model) == {"blocks.0.modulation": ["m"]}
    assert native.pending_patches(SimpleNamespace()) == {}


def test_outside_comfyui_model_management_changes_nothing():
    module = torch.nn.Linear(2, 2)
    loaded = managed.manage(LoadedModel(model=module, metadata={}, path=Path("m")))
    assert loaded.patcher is None and managed.model_management() is None
    assert managed.load_for_sampling(loaded) == torch.device("cpu")
    assert managed.unload(loaded) is False and managed.is_loaded(loaded) is False
    assert managed.offload_device() == torch.device("cpu")


# --- in ComfyUI -----------------------------------------------------------------------------------------------

def ensure_pack_requirements(python: str) -> None:
    """The pack's requirements in ComfyUI's Python, as ComfyUI-Manager installs them for users."""
    if subprocess.run([python, "-c", "import cv2, diffusers, kornia"], check=False).returncode == 0:
        return
    constraints = Path(python).parent.parent / "comfyrig-constraints.txt"  # keeps the rig's torch pair
    extra = ["-c", str(constraints)] if constraints.is_file() else []
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"), *extra], check=True)


def save_lora_case(root: Path, fixtures: Path, teacher) -> None:
    """The teacher (native), its LoRA to the student in ComfyUI's format, and the teacher with it merged by PVTT."""
    from pvtt_train.__main__ import main
    from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
    from pvtt_train.models.lora import apply_lora, load_lora

    one = ["--threads", "1"]
    main([*one, "export", "--model", str(root / "teacher.safetensors"), "--format", "comfy",
          "--out", str(fixtures / "diffusion_models" / "teacher_native.safetensors")])
    for fmt, out in (("comfy", fixtures / "loras" / "lora_comfy.safetensors"), ("pvtt", root / "lora_pvtt.safetensors")):
        main([*one, "export-lora", "--teacher", str(root / "teacher.safetensors"), "--student",
              str(root / "student.safetensors"), "--rank", "4", "--format", fmt, "--out", str(out)])
    student = load_checkpoint(root / "student.safetensors")
    merged = apply_lora(copy.deepcopy(teacher), load_lora(root / "lora_pvtt.safetensors")[0])
    save_checkpoint(root / "merged.safetensors", merged, {k: student.metadata[k] for k in
                                                          ("stage", "schedule", "video", "sampler")})
    main([*one, "export", "--model", str(root / "merged.safetensors"), "--format", "comfy",
          "--out", str(fixtures / "diffusion_models" / "merged_native.safetensors")])


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """The probe's report and clips on a ComfyUI-native 4-step student, in PVTT's and ComfyUI's model folders."""
    from pvtt_train.__main__ import main

    comfy, python = comfy_paths()
    ensure_pack_requirements(python)
    root = tmp_path_factory.mktemp("patcher")
    teacher = comfy_shaped_model(vae_config=Z16_VAE)
    _, student = save_pair(root, teacher, perturbed_student(teacher))
    fixtures = root / "models"
    for folder in ("pvtt", "diffusion_models", "vae", "loras"):
        (fixtures / folder).mkdir(parents=True)
    exported = fixtures / "pvtt" / "student_native.safetensors"
    main(["--threads", "1", "export", "--model", str(student), "--format", "comfy", "--out", str(exported)])
    save_lora_case(root, fixtures, teacher)
    (fixtures / "diffusion_models" / exported.name).write_bytes(exported.read_bytes())
    vae = full_wan21_vae()
    save_file(native_wan.vae_tensors(vae), str(fixtures / "vae" / "wan21_vae.safetensors"),
              metadata=native_wan.vae_header(vae))
    given = clip()
    save_file({"template": given["template_video"], "mask": given["mask"], "product": given["product_image"]},
              str(root / "inputs.safetensors"))
    script = Path(__file__).with_name("_comfy_patcher_probe.py")
    command = [python, str(script), str(comfy), str(ROOT), str(fixtures), str(root / "inputs.safetensors"),
               str(root / "out.safetensors")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=script.parent,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE "):]), load_file(str(root / "out.safetensors"))


@needs_comfy
def test_load_model_gives_a_patcher_managed_model_that_unloads_and_reloads_to_the_same_output(probed):
    report, clips = probed
    patcher = report["patcher"]
    assert patcher["is_model_patcher"]
    assert patcher["load_device"] == patcher["comfy_device"] and patcher["offload_device"] == patcher[
        "unet_offload_device"]
    assert not report["loaded_before_run"] and report["loaded_after_run"]
    assert report["loaded_size_after_run_mb"] == pytest.approx(patcher["size_mb"])
    assert not report["loaded_after_unload_all"] and report["loaded_size_after_unload_mb"] == 0
    assert report["loaded_after_rerun"] and report["managed_unload"] and not report["loaded_after_managed_unload"]
    assert report["loaded_before_overwrite"] and report["overwrite"] == {"new_model": True, "old_loaded": False,
                                                                      "new_managed": True}
    assert torch.equal(clips["reloaded"], clips["pvtt"])
    print(f"PVTT model: {patcher['size_mb']:.0f} MB in a ModelPatcher ({patcher['load_device']} / "
          f"{patcher['offload_device']}); unload + reload: identical output")


@needs_comfy
def test_native_model_path_equals_the_pvtt_model_path_on_the_same_weights(probed):
    report, clips = probed
    assert report["native_dtype"] == "torch.float32" and report["vae_dtype"] == "torch.float32"
    assert report["native_metadata"]["sampler"]["steps"] == 4
    assert report["native_metadata"]["video"] == {"frames": 9, "height": 32, "width": 32}
    error = (clips["native"] - clips["pvtt"]).abs().max().item()
    print(f"native MODEL path vs PVTT_MODEL path, max abs: {error:.2e} "
          f"({report['native_seconds']:.1f} s vs {report['pvtt_seconds']:.1f} s)")
    assert clips["native"].shape == clips["pvtt"].shape == (9, 32, 32, 3)
    assert clips["pvtt"].std() > 0.05  # a rendered clip, not a constant
    assert error <= 1e-4


@needs_comfy
def test_native_model_path_shares_comfyuis_weights_instead_of_loading_them_again(probed):
    report, _ = probed
    shared = report["shared"]
    assert shared["pvtt_weights"] == shared["comfy_weights"] == shared["sharing_storage"] > 0
    assert shared["pvtt_bytes"] == shared["comfy_bytes"]
    print(f"native path: {shared['sharing_storage']}/{shared['pvtt_weights']} weights share storage with ComfyUI's "
          f"({shared['comfy_bytes'] / 2**20:.0f} MB not loaded a second time)")


@needs_comfy
def test_a_lora_from_core_lora_loader_model_only_is_in_the_weights_the_native_path_samples_with(probed):
    """UNETLoader -> LoraLoaderModelOnly (PVTT's LoRA in ComfyUI's format) -> native_model renders what the LoRA
    merged into the weights by PVTT renders, and not what the base model renders; ComfyUI unpatching the shared
    weights for the base run and patching them again leaves the LoRA run unchanged."""
    report, clips = probed
    assert report["lora_patches"] > 0
    error = (clips["lora"] - clips["merged"]).abs().max().item()
    from_base = (clips["lora"] - clips["base"]).abs().max().item()
    again = (clips["lora_again"] - clips["lora"]).abs().max().item()
    print(f"UNETLoader -> LoraLoaderModelOnly -> native_model vs PVTT-merged weights, max abs: {error:.2e}; "
          f"vs the base model without the LoRA: {from_base:.2e}; LoRA run after the base run: {again:.2e}")
    assert clips["merged"].std() > 0.05
    assert error <= 1e-4 and again <= 1e-4
    assert from_base > 100 * max(error, 1e-6)
