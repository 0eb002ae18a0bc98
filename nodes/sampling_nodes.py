"""PVTT Template Transfer: the template clip re-rendered with the new product.

Sampling follows the checkpoint's metadata (the student's trained timesteps, the teacher's Euler
steps and CFG); the node reports each step to ComfyUI's progress bar, with a cheap preview of the
current estimate when ComfyUI's preview method asks for one (``step_preview``), and stops at once
when the user presses Cancel. A batch of product photos renders one clip per photo
(``pvtt_train.product_batch``), and the node tells the designer on the canvas what working size and
frame windows the model really renders at (``pvtt_train.working_size``).
"""

from __future__ import annotations

import logging

from .runtime import check_interrupted, progress_bar

log = logging.getLogger("[PVTT]")

FIT_CHOICES = ["crop", "pad", "stretch"]  # pvtt_train.media.fit.FITS, listed here so start-up imports no torch


class PVTTTemplateTransfer:
    DESCRIPTION = ("Re-renders the template video with the new product in place of the masked one, following the "
                   "template's motion, scale and lighting. Inputs of any size and length are fitted to the model's "
                   "working size (16x16 and 9-frame windows for the embedded model; see fit) and processed in "
                   "overlapping windows of its frame count; the result comes back at input size, and the node "
                   "shows the working size and the upscale on the canvas. A batch of N product photos gives N "
                   "clips, one after another, concatenated (frames_per_clip frames each). "
                   "Takes a PVTT model (PVTT Load Model) or a Wan2.1-VACE MODEL already loaded by ComfyUI "
                   "(UNETLoader, with its VAE), whose weights it shares rather than loading them again.")
    CATEGORY = "PVTT/sampling"
    FUNCTION = "transfer"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("generated", "frames_per_clip")
    OUTPUT_TOOLTIPS = (("The generated clip at the template's size (N clips one after another for a batch of N "
                        "product photos). Pass it through PVTT Background Preserve to keep the template's exact "
                        "pixels outside the mask."),
                       ("Frames in each clip (the template's frame count). Connect it to PVTT Save Video's "
                        "frames_per_clip to save a batch as one numbered file per product."))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK", {"tooltip": "Where the old product is, per frame: white (1) = replace. One mask per frame, "
                                         "or a single mask used for every frame; same size as the video."}),
            "product_image": ("IMAGE", {"tooltip": "Photo of the new product on a plain light background. A batch of "
                                                   "N photos renders N clips, one per product, with the same seed; "
                                                   "Cancel stops between clips too."}),
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
            "fit": (FIT_CHOICES, {"default": "crop",
                                  "tooltip": "How the clip reaches the model's working size (16x16 for the embedded "
                                             "model; the canvas shows the size after a run). crop: a region with "
                                             "the model's aspect ratio around the mask is rendered and pasted back, "
                                             "the rest keeps the template's pixels. pad: letterboxed, rendered, bars "
                                             "cut off. stretch: squeezed and stretched back (aspect ratio not kept; "
                                             "earlier versions)."}),
        }}

    def transfer(self, model=None, template_video=None, mask=None, product_image=None, steps=0, seed=0,
                 preserve_background=True, prompt="", negative_prompt="", photo_detail=True, native_model=None,
                 vae=None, sigmas=None, template_core_video=None, fit="crop"):
        from ..pvtt_train.pipeline import transfer
        from ..pvtt_train.product_batch import check_batch_memory, product_photos, render_products
        from ..pvtt_train.validation import clip_and_mask
        from ..pvtt_train.working_size import working_size_text
        from .core_video import template_frames
        from .managed_models import load_for_sampling
        from .native_model import resolve_model
        from .step_preview import step_previewer

        template_video = template_frames(template_video, template_core_video, "PVTT Template Transfer")
        # Checked first (the native path takes its working size from the template): every photo before any clip.
        template, mask_checked = clip_and_mask(template_video, mask, "template video", "the template video")
        photos = product_photos(product_image)
        model = resolve_model(model, native_model, vae, sigmas, template)
        trained = model.sampler.get("steps")
        if sigmas is not None and steps:
            log.warning("steps=%d is ignored: the connected sigmas give %d steps", steps, trained)
            steps = 0
        if steps and steps != trained:
            log.warning("steps=%d differs from the %s steps %s was trained for; expect lower quality "
                        "(set steps to 0 to use the trained count)", steps, trained, model.path.name)
        load_for_sampling(model)
        check_batch_memory(len(photos), *template.shape[:3])
        bar = progress_bar(len(photos))
        preview = step_previewer(model)

        def render(photo, clip):
            def on_step(i, total, x0):
                check_interrupted()
                bar.update_absolute(clip * total + i, len(photos) * total, preview(x0) if preview else None)

            return transfer(model, template_video, mask, photo, steps=steps or None, seed=seed,
                            preserve_background=preserve_background, callback=on_step, prompt=prompt or None,
                            negative_prompt=negative_prompt or None, photo_detail=photo_detail, fit=fit)

        out, frames_per_clip = render_products(render, photos, check_cancel=check_interrupted)
        video = model.video
        text = working_size_text((video["height"], video["width"]), video["frames"], tuple(template.shape[1:3]),
                                 template.shape[0], fit, mask_checked, clips=len(photos), photo_detail=photo_detail)
        log.info("%s", text)
        return {"ui": {"text": [text]}, "result": (out, frames_per_clip)}
