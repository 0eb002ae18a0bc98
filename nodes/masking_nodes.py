"""PVTT Background Preserve: the generated product over the template's own pixels.

The model works at low resolution, so its background is only close to the template's. Compositing
in pixel space at full resolution puts back the exact template everywhere outside the (dilated,
feathered) mask.
"""

from __future__ import annotations


class PVTTBackgroundPreserve:
    DESCRIPTION = ("Pastes the generated product region over the original template video, so everything outside the "
                   "mask keeps the template's exact pixels. The mask is grown by dilate_px and softened by feather_px "
                   "to hide the seam.")
    CATEGORY = "PVTT/masking"
    FUNCTION = "composite"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("video", "soft_mask")
    OUTPUT_TOOLTIPS = (
        "The final clip: generated inside the soft mask, the template outside.",
        "The blend weights used, [frames, height, width] in 0..1 (1 = generated).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generated": ("IMAGE", {"tooltip": "The clip from PVTT Template Transfer."}),
            "template_video": ("IMAGE", {"tooltip": "The same template clip that went into PVTT Template Transfer."}),
            "mask": ("MASK", {"tooltip": "The same product mask: pixels above 0.5 (white) are the product, as in "
                                         "Template Transfer."}),
            "dilate_px": ("INT", {"default": 2, "min": 0, "max": 64, "step": 1,
                                  "tooltip": "Grow the mask by this many pixels so the product's edge and small mask "
                                             "errors are covered by the generated clip."}),
            "feather_px": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 32.0, "step": 0.5,
                                     "tooltip": "Soften the mask edge (Gaussian sigma in pixels) so there is no hard "
                                                "seam; 0 gives a hard edge."}),
        }}

    def composite(self, generated, template_video, mask, dilate_px, feather_px):
        from ..pvtt_train.errors import InputError
        from ..pvtt_train.sampling.composite import blend, soft_mask
        from ..pvtt_train.validation import (
            check_mask_coverage,
            check_mask_fits,
            check_output_memory,
            image_batch,
            mask_frames,
        )

        generated, template_video = image_batch(generated, "generated"), image_batch(template_video, "template_video")
        if generated.shape != template_video.shape:
            raise InputError(f"generated clip {tuple(generated.shape)} and template video {tuple(template_video.shape)} "
                             f"differ in shape; connect the template that went into PVTT Template Transfer.")
        mask = mask_frames(mask)
        check_mask_fits(mask, *generated.shape[:3], video="the generated clip")
        check_mask_coverage(mask)
        check_output_memory(generated)
        mask = (mask > 0.5).to(generated)  # the product region, as Template Transfer reads it
        soft = soft_mask(mask, dilate_px, feather_px).expand(generated.shape[0], -1, -1)
        video = blend(generated, template_video, soft)
        return (video.clamp(0, 1), soft.contiguous())
