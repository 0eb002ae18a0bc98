"""PVTT Template Transfer: the template clip re-rendered with the new product.

Sampling follows the checkpoint's metadata (the student's trained timesteps, the teacher's Euler
steps and CFG); the node reports each step to ComfyUI's progress bar, with a preview of the
current estimate, and stops at once when the user presses Cancel.
"""

from __future__ import annotations

import logging

from .runtime import check_interrupted, progress_bar

log = logging.getLogger("[PVTT]")

PREVIEW_SIZE = 256


class PVTTTemplateTransfer:
    DESCRIPTION = ("Re-renders the template video with the new product in place of the masked one, following the "
                   "template's motion, scale and lighting. Inputs of any size and length are resized to the model's "
                   "resolution and processed in windows of its frame count; the result comes back at input size. "
                   "Takes a PVTT model (PVTT Load Model) or a Wan2.1-VACE MODEL already loaded by ComfyUI "
                   "(UNETLoader, with its VAE), whose weights it shares rather than loading them again.")
    CATEGORY = "PVTT/sampling"
    FUNCTION = "transfer"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("generated",)
    OUTPUT_TOOLTIPS = (("The generated clip at the template's size. Pass it through PVTT Background Preserve to keep "
                        "the template's exact pixels outside the mask."),)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK", {"tooltip": "Where the old product is, per frame: white (1) = replace. One mask per frame, "
                                         "or a single mask used for every frame; same size as the video."}),
            "product_image": ("IMAGE", {"tooltip": "Photo of the new product on a plain light background "
                                                   "(the first image is used if a batch is connected)."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 200, "step": 1,
                              "tooltip": "Sampling steps; 0 uses the count the checkpoint was trained for (4 for the "
                                         "student). Other values work but usually look worse on a distilled model."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Random seed of the starting noise; the same seed and inputs give the same clip."}),
            "preserve_background": ("BOOLEAN", {"default": True,
                                                "tooltip": "Keep the model's view of the background tied to the "
                                                           "template at every step (recommended)."}),
        }, "optional": {  # appended after the original widgets, so saved workflows keep their values
            "prompt": ("STRING", {"default": "", "multiline": True,
                                  "tooltip": "What the clip should show, for a model with a text encoder (a Wan-VACE "
                                             "folder and its students), as in the stock Wan pipeline. The embedded "
                                             "PVTT model has none and ignores the text."}),
            "negative_prompt": ("STRING", {"default": "", "multiline": True,
                                           "tooltip": "What to steer away from (e.g. blurry, static, watermark): "
                                                      "guidance pushes a teacher's result from this toward the "
                                                      "prompt. Ignored by models without a text encoder."}),
            "photo_detail": ("BOOLEAN", {"default": True,
                                         "tooltip": "Add the product photo's fine detail (labels, texture, thin parts), "
                                                    "warped onto the mask at full resolution, on top of what the model "
                                                    "renders at its working size (16x16 for the embedded model): the "
                                                    "model supplies light, shading and blending, the photo the "
                                                    "detail. No effect when the clip is no larger than the working "
                                                    "size."}),
            # Was the first required input; appended here (a socket, not a widget): saved workflows name their
            # links, so they still load.
            "model": ("PVTT_MODEL", {"tooltip": "The model from PVTT Load Model. Optional when native_model is "
                                                "connected; one of the two is needed."}),
            "native_model": ("MODEL", {"tooltip": "A ComfyUI Wan2.1-VACE MODEL (UNETLoader, optionally through "
                                                  "LoraLoaderModelOnly with the PVTT LoRA) to sample instead of a "
                                                  "PVTT model file: PVTT runs on ComfyUI's loaded weights, shared, "
                                                  "not loaded again. Needs 'vae'. With 'model' connected too, "
                                                  "that model's sampler, size and prompt context apply."}),
            "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (VAELoader) for native_model; its loaded weights are "
                                       "shared too. Unused without native_model."}),
            "sigmas": ("SIGMAS", {"tooltip": "Sample with PVTT's few-step sampler at exactly these sigmas (PVTT "
                                             "Student Sigmas for a student file or the PVTT LoRA) instead of the "
                                             "model's own sampler; overrides steps."}),
            # optional since template_core_video can stand in for it; connect exactly one of the two
            "template_video": ("IMAGE", {"tooltip": "The template clip whose product is replaced (from PVTT Load "
                                                    "Video). Connect this or template_core_video, not both."}),
            "template_core_video": ("VIDEO", {"tooltip": "The template clip as a core ComfyUI VIDEO (from core Load "
                                                         "Video or Create Video), instead of template_video."}),
        }}

    def transfer(self, model=None, template_video=None, mask=None, product_image=None, steps=0, seed=0,
                 preserve_background=True, prompt="", negative_prompt="", photo_detail=True, native_model=None,
                 vae=None, sigmas=None, template_core_video=None):
        from ..pvtt_train.pipeline import transfer
        from .core_video import template_frames
        from .managed_models import load_for_sampling
        from .native_model import resolve_model

        template_video = template_frames(template_video, template_core_video, "PVTT Template Transfer")

        if native_model is not None:  # the working size comes from the template: refuse a bad one clearly first
            from ..pvtt_train.pipeline import check_inputs

            template_video, mask, product_image = check_inputs(template_video, mask, product_image)
        model = resolve_model(model, native_model, vae, sigmas, template_video)
        trained = model.sampler.get("steps")
        if sigmas is not None and steps:
            log.warning("steps=%d is ignored: the connected sigmas give %d steps", steps, trained)
            steps = 0
        if steps and steps != trained:
            log.warning("steps=%d differs from the %s steps %s was trained for; expect lower quality "
                        "(set steps to 0 to use the trained count)", steps, trained, model.path.name)
        load_for_sampling(model)
        bar = progress_bar(1)

        def on_step(i, total, x0):
            check_interrupted()
            bar.update_absolute(i, total, preview(model, x0))

        out = transfer(model, template_video, mask, product_image, steps=steps or None,
                       seed=seed, preserve_background=preserve_background, callback=on_step,
                       prompt=prompt or None, negative_prompt=negative_prompt or None, photo_detail=photo_detail)
        return (out,)


def preview(model, x0):
    """Middle frame of the current estimate, upscaled, in the ("JPEG", image, size) form ComfyUI sends."""
    from PIL import Image

    video = model.model.decode(x0)[0]
    frame = (video[video.shape[0] // 2].float().cpu().numpy() * 255).round().astype("uint8")
    image = Image.fromarray(frame)
    scale = max(1, PREVIEW_SIZE // max(image.size))
    return ("JPEG", image.resize((image.width * scale, image.height * scale), Image.NEAREST), PREVIEW_SIZE)
