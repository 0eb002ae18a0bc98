"""PVTT Background Preserve: the generated product over the template's own pixels.

The model works at low resolution, so its background is only close to the template's. Compositing
in pixel space at full resolution puts back the exact template everywhere outside the mask. The soft
edge lies inside the mask (``inward_alpha``): growing it outwards, as earlier versions did, spread the
model's blurry pixels over the background. The widgets keep their names, ranges and order so saved
workflows load; ``dilate_px`` now sets how far inside the edge the blend sits.
"""

from __future__ import annotations


class PVTTBackgroundPreserve:
    DESCRIPTION = ("Pastes the generated product region over the original template video, so everything outside the "
                   "mask keeps the template's exact pixels. The seam is softened inside the mask only (dilate_px in, "
                   "feather_px soft); grow the mask with PVTT Mask Grow/Shrink/Feather first to cover more.")
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
            "template_video": ("IMAGE", {"tooltip": "The same template clip that went into PVTT Template Transfer."}),
            "mask": ("MASK", {"tooltip": "The same product mask: pixels above 0.5 (white) are the product, as in "
                                         "Template Transfer."}),
            "dilate_px": ("INT", {"default": 2, "min": 0, "max": 64, "step": 1,
                                  "tooltip": "Inset of the soft edge: the blend's midpoint sits about this many pixels "
                                             "inside the mask edge, and the generated clip never reaches past the "
                                             "mask (earlier versions grew the mask outwards by this much; use PVTT "
                                             "Mask Grow/Shrink/Feather for that). 0 with feather_px 0 is a hard cut."}),
            "feather_px": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 32.0, "step": 0.5,
                                     "tooltip": "Softness of the edge inside the mask (Gaussian sigma in pixels); 0 "
                                                "gives a hard edge. Keep it at most half of dilate_px so the blend "
                                                "starts from the template at the mask edge without a step."}),
        }}

    def composite(self, generated, template_video, mask, dilate_px, feather_px):
        from ..pvtt_train.errors import InputError
        from ..pvtt_train.sampling.composite import blend, inward_alpha
        from ..pvtt_train.validation import (
            check_mask_coverage,
            check_mask_fits,
            check_output_memory,
            image_batch,
            mask_frames,
        )

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
        mask = (mask > 0.5).to(generated)  # the product region, as Template Transfer reads it
        soft = inward_alpha(mask, dilate_px, feather_px).expand(generated.shape[0], -1, -1)
        video = blend(generated, template_video, soft)
        return (video.clamp(0, 1), soft.contiguous())
