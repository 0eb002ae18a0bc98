"""PVTT Background Preserve: the generated product over the template's own pixels.

The model works at low resolution, so its background is only close to the template's. Compositing
in pixel space at full resolution puts back the exact template everywhere outside the mask, with
``sampling.composite.background_preserve`` (the one composite ``sample``, ``evaluate`` and the
distillation gates use too). The generated clip covers the whole mask, so no rim of the template's
old product survives inside it. The widgets keep their names, ranges and order so saved workflows
load; ``dilate_px`` grows the generated region outwards over the background and ``feather_px`` fades
the outer edge of that grown band (both 0 by default: the mask exactly).
"""

from __future__ import annotations


class PVTTBackgroundPreserve:
    DESCRIPTION = ("Pastes the generated clip over the original template video inside the mask, so everything outside "
                   "the mask keeps the template's exact pixels and nothing of the template's old product is left "
                   "inside it. Mask values of 0.5 and above are fully generated, an anti-aliased fringe below 0.5 is "
                   "blended (a ramp from 0 at mask 0.02 to 1 at 0.5; codec noise up to 0.02 counts as 0), 0 is the "
                   "template. Optionally grow the generated region over the "
                   "background (dilate_px) and fade the grown band's outer edge (feather_px).")
    CATEGORY = "PVTT/masking"
    FUNCTION = "composite"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("video", "soft_mask")
    OUTPUT_TOOLTIPS = (
        "The final clip: generated inside the soft mask, the template's exact pixels outside the mask.",
        "The blend weights used, [frames, height, width] in 0..1 (1 = generated).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generated": ("IMAGE", {"tooltip": "The clip from PVTT Template Transfer (for a batch of products, "
                                               "its N clips: the template and mask are repeated per clip)."}),
            "mask": ("MASK", {"tooltip": "The same product mask: pixels above 0.5 (white) are the product, as in "
                                         "Template Transfer."}),
            "dilate_px": ("INT", {"default": 0, "min": 0, "max": 64, "step": 1,
                                  "tooltip": "Grow: also generate this many pixels of background around the mask "
                                             "(a square dilation), to hide a mask that is slightly too tight. The "
                                             "generated clip never reaches past the grown mask; 0 (default) keeps "
                                             "it exactly to the mask."}),
            "feather_px": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 32.0, "step": 0.5,
                                     "tooltip": "Soft edge of the grown band (Gaussian sigma in pixels): fades the "
                                                "generated pixels into the template's background towards the grown "
                                                "edge, never into the old product inside the mask. Needs dilate_px; "
                                                "with dilate_px 0 it has no effect. Keep dilate_px at least 2 x "
                                                "feather_px so the fade reaches 0 at the edge. 0 (default) is a "
                                                "hard edge."}),
        }, "optional": {  # template_video was required; either it or template_core_video must be connected
            "template_video": ("IMAGE", {"tooltip": "The same template clip that went into PVTT Template Transfer. "
                                                    "Connect this or template_core_video, not both."}),
            "template_core_video": ("VIDEO", {"tooltip": "The template clip as a core ComfyUI VIDEO (from core Load "
                                                         "Video or Create Video), instead of template_video."}),
        }}

    def composite(self, generated, template_video=None, mask=None, dilate_px=0, feather_px=0.0,
                  template_core_video=None):
        from ..pvtt_train.errors import InputError
        from ..pvtt_train.sampling.composite import background_preserve
        from ..pvtt_train.validation import (
            check_mask_coverage,
            check_mask_fits,
            check_output_memory,
            image_batch,
            mask_frames,
        )
        from .core_video import template_frames

        template_video = template_frames(template_video, template_core_video, "PVTT Background Preserve")

        from .clip_sets import template_for

        generated, template_video = image_batch(generated, "generated"), image_batch(template_video, "template_video")
        mask = mask_frames(mask)
        template_video, mask = template_for(generated, template_video, mask)  # N clips made from one template
        if generated.shape != template_video.shape:
            raise InputError(f"generated clip {tuple(generated.shape)} and template video {tuple(template_video.shape)} "
                             f"differ in shape; connect the template that went into PVTT Template Transfer.")
        check_mask_fits(mask, *generated.shape[:3], video="the generated clip")
        check_mask_coverage(mask)
        check_output_memory(generated)
        video, soft = background_preserve(template_video, generated, mask, grow=int(dilate_px),
                                          feather=float(feather_px), return_alpha=True)
        return (video, soft.contiguous())
