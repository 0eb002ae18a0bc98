"""PVTT's models under ComfyUI's model management, in ComfyUI's own code; started by tests/test_model_patcher.py in
the Python that runs ComfyUI (the rig's venv).

``python _comfy_patcher_probe.py COMFYUI PACK FIXTURES INPUTS OUT``: FIXTURES holds ``pvtt/`` (PVTT Load Model's
folder, with a ComfyUI-native Wan-VACE student), ``diffusion_models/`` (the same file, for UNETLoader) and ``vae/``
(its Wan 2.1 VAE, for VAELoader and for PVTT Load Model). On the template, mask and product in INPUTS:

- ``pvtt``: PVTT Load Model -> PVTT Template Transfer (the PVTT_MODEL path), through ComfyUI's model management;
- ``reloaded``: the same after ``comfy.model_management.unload_all_models()`` ("Unload models"); then the file is
  overwritten (new mtime) while the model is loaded, and Load Model must unload the old one;
- ``native``: UNETLoader + VAELoader + PVTT Student Sigmas -> PVTT Template Transfer's native_model/vae/sigmas;
- ``native_built``: what the native path samples with, checked for storage shared with ComfyUI's tensors;
- ``lora``: UNETLoader (the teacher, ``diffusion_models/teacher_native.safetensors``) -> core LoraLoaderModelOnly
  (``loras/lora_comfy.safetensors``, PVTT's export-lora --format comfy) -> native_model; ``merged``: the teacher
  with that LoRA merged in by PVTT (``diffusion_models/merged_native.safetensors``) through UNETLoader, unpatched;
  ``base``: the teacher without the LoRA, run after the LoRA so ComfyUI has to unpatch the shared weights.

Writes the three clips to OUT and prints a JSON report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from _comfy_native_probe import _import_pack, import_comfy


def main(comfy_dir: str, pack_root: str, fixtures: str, inputs_path: str, out: str) -> dict:
    import_comfy(comfy_dir)
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths
    from safetensors.torch import load_file, save_file

    import nodes as comfy_nodes

    fx = Path(fixtures)
    folder_paths.folder_names_and_paths["pvtt"] = ([str(fx / "pvtt")], {".safetensors"})
    folder_paths.add_model_folder_path("diffusion_models", str(fx / "diffusion_models"), is_default=True)
    folder_paths.add_model_folder_path("vae", str(fx / "vae"), is_default=True)
    folder_paths.add_model_folder_path("loras", str(fx / "loras"), is_default=True)
    pack = _import_pack(pack_root)
    nodes = pack.NODE_CLASS_MAPPINGS
    managed = sys.modules[f"{Path(pack_root).name}.nodes.managed_models"]
    given = load_file(inputs_path)
    clip = {"template_video": given["template"], "mask": given["mask"], "product_image": given["product"],
            "steps": 0, "seed": 3, "preserve_background": True}
    transfer = nodes["PVTTTemplateTransfer"]()
    report: dict = {}

    # (a) PVTT Load Model: a patcher-managed model; unload, reload, same output
    loaded = nodes["PVTTLoadModel"]().load("student_native.safetensors")[0]
    patcher = loaded.patcher
    report["patcher"] = {"class": type(patcher).__name__, "is_model_patcher": isinstance(
        patcher, comfy.model_patcher.ModelPatcher), "load_device": str(patcher.load_device),
        "offload_device": str(patcher.offload_device), "comfy_device": str(mm.get_torch_device()),
        "unet_offload_device": str(mm.unet_offload_device()), "size_mb": patcher.model_size() / 2**20}
    report["loaded_before_run"] = managed.is_loaded(loaded)
    started = time.perf_counter()
    pvtt = transfer.transfer(model=loaded, **clip)["result"][0]
    report["pvtt_seconds"] = time.perf_counter() - started
    report["loaded_after_run"] = managed.is_loaded(loaded)
    report["loaded_size_after_run_mb"] = patcher.loaded_size() / 2**20
    mm.unload_all_models()
    report["loaded_after_unload_all"] = managed.is_loaded(loaded)
    report["loaded_size_after_unload_mb"] = patcher.loaded_size() / 2**20
    reloaded = transfer.transfer(model=loaded, **clip)["result"][0]
    report["loaded_after_rerun"] = managed.is_loaded(loaded)
    report["managed_unload"] = managed.unload(loaded)
    report["loaded_after_managed_unload"] = managed.is_loaded(loaded)
    # the file overwritten while ComfyUI holds the old model: Load Model unloads the old one through model management
    managed.load_for_sampling(loaded)
    report["loaded_before_overwrite"] = managed.is_loaded(loaded)
    path = fx / "pvtt" / "student_native.safetensors"
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    fresh = nodes["PVTTLoadModel"]().load("student_native.safetensors")[0]
    report["overwrite"] = {"new_model": fresh is not loaded, "old_loaded": managed.is_loaded(loaded),
                           "new_managed": fresh.patcher is not None and fresh.patcher is not patcher}
    del fresh

    # (b) + (c) the native MODEL path on the same file: UNETLoader's weights, shared
    native_model = comfy_nodes.UNETLoader().load_unet("student_native.safetensors", "default")[0]
    vae = comfy_nodes.VAELoader().load_vae("wan21_vae.safetensors")[0]
    sigmas = nodes["PVTTStudentSigmas"]().sigmas("diffusion_models/student_native.safetensors")[0]
    report["native_dtype"] = str(native_model.model.get_dtype())
    report["vae_dtype"] = str(vae.vae_dtype)
    report["sigmas"] = [float(s) for s in sigmas]
    started = time.perf_counter()
    native = transfer.transfer(native_model=native_model, vae=vae, sigmas=sigmas, **clip)["result"][0]
    report["native_seconds"] = time.perf_counter() - started

    native_module = sys.modules[f"{Path(pack_root).name}.nodes.native_model"]
    built = native_module.resolve_model(None, native_model, vae, sigmas, given["template"])
    comfy_params = {**{f"t:{k}": v for k, v in native_model.model.diffusion_model.named_parameters()},
                    **{f"v:{k}": v for k, v in vae.first_stage_model.named_parameters()}}
    comfy_ptrs = {v.data_ptr() for v in comfy_params.values()}
    pvtt_params = list(built.model.transformer.parameters()) + list(built.model.vae.parameters())
    report["shared"] = {"pvtt_weights": len(pvtt_params), "comfy_weights": len(comfy_params),
                        "sharing_storage": sum(p.data_ptr() in comfy_ptrs for p in pvtt_params),
                        "pvtt_bytes": sum(p.numel() * p.element_size() for p in pvtt_params),
                        "comfy_bytes": sum(p.numel() * p.element_size() for p in comfy_params.values())}
    report["native_metadata"] = {k: built.metadata[k] for k in ("sampler", "schedule", "video")}
    del built

    # (d) a LoRA applied by core LoraLoaderModelOnly: its patches must be in the weights PVTT samples with
    teacher = comfy_nodes.UNETLoader().load_unet("teacher_native.safetensors", "default")[0]
    with_lora = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(teacher, "lora_comfy.safetensors", 1.0)[0]
    report["lora_patches"] = len(with_lora.patches)
    lora = transfer.transfer(native_model=with_lora, vae=vae, sigmas=sigmas, **clip)["result"][0]
    base = transfer.transfer(native_model=teacher, vae=vae, sigmas=sigmas, **clip)["result"][0]
    lora_again = transfer.transfer(native_model=with_lora, vae=vae, sigmas=sigmas, **clip)["result"][0]
    merged_model = comfy_nodes.UNETLoader().load_unet("merged_native.safetensors", "default")[0]
    merged = transfer.transfer(native_model=merged_model, vae=vae, sigmas=sigmas, **clip)["result"][0]
    save_file({"pvtt": pvtt.contiguous(), "reloaded": reloaded.contiguous(), "native": native.contiguous(),
               "lora": lora.contiguous(), "base": base.contiguous(), "lora_again": lora_again.contiguous(),
               "merged": merged.contiguous()}, out)
    return report


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(*sys.argv[1:])))
