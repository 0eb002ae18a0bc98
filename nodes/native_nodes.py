"""PVTT's 4-step students inside a designer's own native Wan-VACE graph (UNETLoader, LoraLoaderModelOnly,
CLIPLoader, SamplerCustomAdvanced): three nodes that speak ComfyUI's own types.

- PVTT Student Sigmas: the SIGMAS a student was distilled at, from its file's metadata;
- PVTT Few-Step Sampler: the SAMPLER (DMD's few-step sampler, with PVTT's background re-injection);
- PVTT VACE Conditioning: WanVaceToVideo with PVTT's conventions, plus what the sampler re-injects.

ComfyUI and torch are imported when a node runs, so loading the pack stays cheap.
"""

from __future__ import annotations

from ..pvtt_train.errors import InputError
from . import paths

#: Folders a student's sigmas can be read from, as ``folder/name`` entries.
SIGMA_FOLDERS = ("loras", "diffusion_models")


def student_files() -> list[str]:
    """Students and LoRAs in ComfyUI's loras/ and diffusion_models/ folders and in PVTT's own."""
    fp = paths._folder_paths()
    names = []
    if fp is not None:
        for folder in SIGMA_FOLDERS:
            names += [f"{folder}/{n}" for n in fp.get_filename_list(folder) if n.endswith(".safetensors")]
    names += [f"pvtt/{n}" for n in paths.model_names() if n.endswith(".safetensors")]
    return names


def student_file(entry: str):
    folder, _, name = entry.partition("/")
    if folder == "pvtt":
        return paths.model_path(name)
    fp = paths._folder_paths()
    if folder not in SIGMA_FOLDERS or fp is None or fp.get_full_path(folder, name) is None:
        raise InputError(f"PVTT Student Sigmas: {entry!r} is not in ComfyUI's loras/, diffusion_models/ or "
                         f"models/pvtt; put the student file or its LoRA there and press R.")
    from pathlib import Path

    return Path(fp.get_full_path(folder, name))


class PVTTStudentSigmas:
    DESCRIPTION = ("The sigmas a PVTT few-step student was distilled at (e.g. 4 steps), read from the metadata of "
                   "its file: a PVTT checkpoint, its ComfyUI-native export or its LoRA. Connect to "
                   "SamplerCustomAdvanced's sigmas; any other schedule wastes the distillation.")
    CATEGORY = "PVTT/sampling"
    FUNCTION = "sigmas"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("The student's shifted sigmas followed by 0, as ComfyUI's flow samplers take them.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "student": (student_files(), {
                "tooltip": "The student file (models/diffusion_models or models/pvtt) or the PVTT LoRA "
                           "(models/loras) you sample with; its timesteps and shift are in its metadata."}),
        }}

    def sigmas(self, student):
        import torch

        from ..pvtt_train.models.student_sigmas import read_student_sampling

        return (torch.tensor(read_student_sampling(student_file(student))["sigmas"], dtype=torch.float32),)


class PVTTFewStepSampler:
    DESCRIPTION = ("DMD's few-step sampler for PVTT students, for SamplerCustomAdvanced: predict the clean clip, "
                   "re-noise it with fresh noise to the next sigma. Given PVTT VACE Conditioning's reinjection, "
                   "it keeps the template's background outside the mask at every step and feeds the product "
                   "reference the way the student was trained. With both off it is ComfyUI's lcm sampler.")
    CATEGORY = "PVTT/sampling"
    FUNCTION = "sampler"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's sampler input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "background_reinjection": ("BOOLEAN", {
                "default": True,
                "tooltip": "Outside the mask, replace the latent by the template noised to each step's sigma, so "
                           "the background stays the template's. Needs the reinjection input."}),
            "reference_slot": ("BOOLEAN", {
                "default": True,
                "tooltip": "Set the product reference frame in front of the clip to the reference latent noised "
                           "as PVTT trains it (on), or let it be denoised freely as core Wan-VACE does (off)."}),
        }, "optional": {
            "reinjection": ("PVTT_REINJECTION", {
                "tooltip": "From PVTT VACE Conditioning: the template latent, the mask at latent size and the "
                           "reference latent. Without it the sampler is ComfyUI's lcm."}),
        }}

    def sampler(self, background_reinjection, reference_slot, reinjection=None):
        import comfy.samplers

        from .few_step_sampler import sample_pvtt_few_step

        if reinjection is None and background_reinjection:
            raise InputError("PVTT Few-Step Sampler: background_reinjection needs the reinjection output of PVTT "
                             "VACE Conditioning connected; connect it, or switch background_reinjection off.")
        options = {"reinjection": reinjection, "background": background_reinjection, "reference_slot": reference_slot}
        return (comfy.samplers.KSAMPLER(sample_pvtt_few_step, extra_options=options),)


class PVTTVACEConditioning:
    DESCRIPTION = ("Wan-VACE conditioning with PVTT's conventions, like core WanVaceToVideo: the template video as "
                   "the control video, the mask packed as VACE expects (1 = the product to replace), the product "
                   "photo letterboxed on white as the reference frame. Also outputs what PVTT Few-Step Sampler "
                   "needs to keep the background.")
    CATEGORY = "PVTT/sampling"
    FUNCTION = "condition"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT", "PVTT_REINJECTION")
    RETURN_NAMES = ("positive", "negative", "latent", "trim_latent", "reinjection")
    OUTPUT_TOOLTIPS = ("The prompt with the VACE control attached.", "The negative prompt with the VACE control.",
                       "An empty latent of the clip's size, with the reference frame in front.",
                       "Latent frames to trim after sampling (the reference frame): connect to TrimVideoLatent.",
                       "Template latent, latent mask and reference latent for PVTT Few-Step Sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "The encoded prompt (CLIPTextEncode with the UMT5 encoder)."}),
            "negative": ("CONDITIONING", {"tooltip": "The encoded negative prompt (unused at cfg 1)."}),
            "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (VAELoader, models/vae)."}),
            "template": ("IMAGE", {"tooltip": "The template product video; 1 + 4k frames, sides a multiple of 16."}),
            "mask": ("MASK", {"tooltip": "Per-frame mask of the product to replace (1 = replace), one per frame."}),
            "product": ("IMAGE", {"tooltip": "The new product's photo; the first image is used."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                   "tooltip": "VACE control strength, as in WanVaceToVideo (1 = as trained)."}),
        }}

    def condition(self, positive, negative, vae, template, mask, product, strength):
        from .native_vace import vace_conditioning

        return vace_conditioning(positive, negative, vae, template, mask, product, strength)
