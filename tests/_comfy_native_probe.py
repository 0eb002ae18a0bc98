"""Runs ComfyUI's own code on PVTT's native exports; started by tests/test_native_comfy.py in the Python that
runs ComfyUI (the rig's venv), which holds ComfyUI's dependencies that PVTT's test venv does not.

``python _comfy_native_probe.py COMFYUI lora MODEL LORA OUT``: ``comfy.sd.load_diffusion_model`` on MODEL,
then ``comfy.lora`` on LORA exactly as LoraLoaderModelOnly applies it; writes the patched weights to OUT
and prints a JSON report (detected model class, LoRA keys ComfyUI did not load, weights patched).

``python _comfy_native_probe.py COMFYUI graph PACK MODEL VAE INPUTS OUT``: the native graph of
``workflows/native_wan_vace_pvtt_*.json`` in ComfyUI's own code (UNETLoader's ``load_diffusion_model``,
VAELoader's ``comfy.sd.VAE``, the pack's PVTT VACE Conditioning / Student Sigmas / Few-Step Sampler,
CFGGuider at cfg 1, SamplerCustomAdvanced, TrimVideoLatent, VAEDecode) on the tensors in INPUTS (template,
mask, product, prompt embedding, PVTT's noise draws); the prompt embedding stands in for CLIPTextEncode.
Writes to OUT: ``native`` (the trimmed latent) and ``frames`` (decoded), from PVTT's noise draws; ``lcm``
and ``few_step_plain``: ComfyUI's ``lcm`` sampler and PVTT Few-Step Sampler with re-injection and the
reference slot off, on the same model, sigmas and RandomNoise seed.

``python _comfy_native_probe.py COMFYUI core_schemas NODE...``: the input and output schema of ComfyUI's own
nodes, as ``tests/comfy_core_nodes.json`` records them for the workflow lint (model-file dropdowns
reduced to their folder).
"""

from __future__ import annotations

import json
import logging
import sys


def import_comfy(comfy_dir: str) -> None:
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def lora(model_path: str, lora_path: str, out: str) -> dict:
    import comfy.lora
    import comfy.lora_convert
    import comfy.sd
    import comfy.utils
    import torch
    from safetensors.torch import save_file

    patcher = comfy.sd.load_diffusion_model(model_path, model_options={"dtype": torch.float32})
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(lora_path)), key_map)
    patched = patcher.clone()
    accepted = patched.add_patches(loaded, 1.0)
    patched.patch_model()
    weights = {k[len("diffusion_model."):]: v.detach().float().contiguous()
               for k, v in patched.model.state_dict().items() if k in set(accepted)}
    save_file(weights, out)
    return {"model_class": type(patcher.model).__name__, "model_type": patcher.model.model_config.unet_config.get(
                "model_type"),
            "not_loaded": [m for m in collect.messages if "lora key not loaded" in m or "NOT LOADED" in m],
            "patched": sorted(k[len("diffusion_model."):] for k in accepted)}


class _GivenNoise:
    """A NOISE (SamplerCustomAdvanced's noise input) that returns a given tensor, like RandomNoise returns its draw."""

    def __init__(self, noise, seed: int):
        self.noise, self.seed = noise, seed

    def generate_noise(self, latent):
        return self.noise.clone()


def _import_pack(pack_root: str):
    """The pack as ComfyUI imports a custom-node folder (a package under its folder's name)."""
    import importlib.util
    from pathlib import Path

    root = Path(pack_root)
    spec = importlib.util.spec_from_file_location(root.name, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[root.name] = module
    spec.loader.exec_module(module)
    return module


def graph(pack_root: str, model_path: str, vae_path: str, inputs_path: str, out: str) -> dict:
    import comfy.model_management
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import torch
    from comfy.k_diffusion.sampling import sample_lcm
    from comfy_extras.nodes_custom_sampler import (
        Noise_RandomNoise,
        SamplerCustomAdvanced,
    )
    from comfy_extras.nodes_wan import TrimVideoLatent
    from safetensors.torch import load_file, save_file

    from nodes import VAEDecode

    pack = _import_pack(pack_root)
    nodes = pack.NODE_CLASS_MAPPINGS
    given = load_file(inputs_path)
    patcher = comfy.sd.load_diffusion_model(model_path, model_options={"dtype": torch.float32})
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    prompt = [[given["context"], {}]]
    positive, negative, latent, trim, reinjection = nodes["PVTTVACEConditioning"]().condition(
        prompt, prompt, vae, given["template"], given["mask"], given["product"], 1.0)
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(1.0)
    sigmas = given["sigmas"]
    draws = given["noises"]  # PVTT's draws for the clip; the reference frame's noise is replaced at every step

    def with_reference_frame(clip_noise):
        return torch.cat([torch.zeros_like(clip_noise[:, :, :trim]), clip_noise], dim=2)

    steps = iter(draws[1:])
    sampler = nodes["PVTTFewStepSampler"]().sampler(True, True, reinjection)[0]
    sampler.extra_options["noise_sampler"] = lambda sigma, sigma_next: with_reference_frame(next(steps))
    sampled = SamplerCustomAdvanced().sample(_GivenNoise(with_reference_frame(draws[0]), 0), guider, sampler,
                                             sigmas, latent)[0]
    trimmed = TrimVideoLatent.execute(sampled, trim)[0]
    frames = VAEDecode().decode(vae, trimmed)[0]
    plain = {}
    for name, sampler in (("lcm", comfy.samplers.KSAMPLER(sample_lcm)),
                          ("few_step_plain", nodes["PVTTFewStepSampler"]().sampler(False, False, reinjection)[0])):
        plain[name] = SamplerCustomAdvanced().sample(Noise_RandomNoise(7), guider, sampler, sigmas,
                                                     latent)[0]["samples"]
    save_file({"native": trimmed["samples"].float().contiguous(), "frames": frames.float().contiguous(),
               **{k: v.float().contiguous() for k, v in plain.items()}}, out)
    return {"trim": trim, "model_class": type(patcher.model).__name__,
            "vae_dtype": str(vae.vae_dtype), "model_dtype": str(patcher.model.get_dtype())}


#: Dropdowns of core nodes that list model files, by the models/ folder they list.
MODEL_FOLDERS = {("UNETLoader", "unet_name"): "diffusion_models", ("LoraLoaderModelOnly", "lora_name"): "loras",
                 ("CLIPLoader", "clip_name"): "text_encoders", ("VAELoader", "vae_name"): "vae"}
#: Dropdowns of files in ComfyUI's input folder (differs per install): recorded as empty, with the content type
#: (the lint accepts any file name of that kind, as the designer's files are not known here).
INPUT_FILES = {("LoadVideo", "file"): "video"}
#: Option keys the workflow lint reads.
LINT_OPTIONS = ("default", "min", "max", "control_after_generate", "forceInput")


def core_schemas(*names: str) -> dict:
    import asyncio

    import nodes

    asyncio.run(nodes.init_builtin_extra_nodes())
    schemas = {}
    for name in names:
        node = nodes.NODE_CLASS_MAPPINGS[name]
        spec = node.INPUT_TYPES()
        schema = {}
        for group in ("required", "optional"):
            schema[group] = {}
            for input_name, (kind, *rest) in spec.get(group, {}).items():
                options = rest[0] if rest else {}
                if kind == "COMBO":  # V3 nodes list a dropdown's values in its options
                    kind = list(options["options"])
                if (name, input_name) in INPUT_FILES:
                    kind, options = [], {**options, "input_files": INPUT_FILES[name, input_name]}
                if (name, input_name) in MODEL_FOLDERS:
                    kind, options = [], {"model_folder": MODEL_FOLDERS[name, input_name]}
                schema[group][input_name] = [kind, {k: v for k, v in options.items() if k in LINT_OPTIONS + (
                    "model_folder", "input_files")}]
        schema["return_types"] = list(node.RETURN_TYPES)
        schemas[name] = schema
    return schemas


if __name__ == "__main__":
    comfy_dir, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    import_comfy(comfy_dir)
    report = {"lora": lora, "graph": graph, "core_schemas": core_schemas}[command](*args)
    print("PROBE " + json.dumps(report))
