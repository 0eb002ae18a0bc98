"""Runs ComfyUI's own code on PVTT's native exports; started by tests/test_native_comfy.py in the Python that
runs ComfyUI (the rig's venv), which holds ComfyUI's dependencies that PVTT's test venv does not.

``python _comfy_native_probe.py COMFYUI lora MODEL LORA OUT``: ``comfy.sd.load_diffusion_model`` on MODEL,
then ``comfy.lora`` on LORA exactly as LoraLoaderModelOnly applies it; writes the patched weights to OUT
and prints a JSON report (detected model class, LoRA keys ComfyUI did not load, weights patched).

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


#: Dropdowns of core nodes that list model files, by the models/ folder they list.
MODEL_FOLDERS = {("UNETLoader", "unet_name"): "diffusion_models", ("LoraLoaderModelOnly", "lora_name"): "loras",
                 ("CLIPLoader", "clip_name"): "text_encoders", ("VAELoader", "vae_name"): "vae"}
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
                if (name, input_name) in MODEL_FOLDERS:
                    kind, options = [], {"model_folder": MODEL_FOLDERS[name, input_name]}
                schema[group][input_name] = [kind, {k: v for k, v in options.items() if k in LINT_OPTIONS + (
                    "model_folder",)}]
        schema["return_types"] = list(node.RETURN_TYPES)
        schemas[name] = schema
    return schemas


if __name__ == "__main__":
    comfy_dir, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    import_comfy(comfy_dir)
    report = {"lora": lora, "core_schemas": core_schemas}[command](*args)
    print("PROBE " + json.dumps(report))
