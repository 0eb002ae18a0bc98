"""PVTT VACE Conditioning's work: core WanVaceToVideo's layout, PVTT's inputs and reference handling.

The control is laid out exactly as ComfyUI's WanVaceToVideo lays it out (``vace_frames`` = latents
of the inactive and reactive template, ``vace_mask`` = the pixel mask packed 8x8 into channels;
the model's ``extra_conds`` normalises them), which is also ``WanVACEPVTT.condition``'s layout:

- the mask is binarised at 0.5 and taken at the template's own size (no rescaling), as PVTT does;
- the reference is the product photo scaled to fit and centred on white (``reference_canvas``), not
  centre-cropped as in core, since PVTT's students are trained so;
- the re-injection data are the template's latent, the mask at latent resolution
  (``latent_region``: a cell is regenerated if any pixel it encodes is masked) and the reference
  latent, all raw VAE latents (the sampler applies the model's ``process_latent_in``).
"""

from __future__ import annotations

import torch

from ..pvtt_train.errors import InputError

#: ComfyUI's Wan 2.1 VAE: 4x in time, 8x in space, 16 latent channels.
TEMPORAL, SPATIAL, LATENT_CHANNELS = 4, 8, 16
#: The transformer's spatial patch.
PATCH = 2


def check_inputs(template: torch.Tensor, mask: torch.Tensor) -> None:
    frames, height, width = template.shape[:3]
    if (frames - 1) % TEMPORAL:
        lower = (frames - 1) // TEMPORAL * TEMPORAL + 1
        raise InputError(f"PVTT VACE Conditioning: the Wan VAE encodes 1 + 4k frames; the template has {frames}. "
                         f"Use {lower} or {lower + TEMPORAL} frames (e.g. PVTT Load Video's frame cap).")
    if height % (SPATIAL * PATCH) or width % (SPATIAL * PATCH):
        raise InputError(f"PVTT VACE Conditioning: the template is {width}x{height}; Wan-VACE needs both sides a "
                         f"multiple of {SPATIAL * PATCH}. Resize it (e.g. ImageScale) first.")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape[0] not in (1, frames) or tuple(mask.shape[1:]) != (height, width):
        raise InputError(f"PVTT VACE Conditioning: the mask is {tuple(mask.shape)} but the template is {frames} "
                         f"frames of {height}x{width}; give one mask per frame at the template size "
                         f"(PVTT Match Mask to Video).")


def vace_conditioning(positive, negative, vae, template, mask, product, strength):
    import comfy.latent_formats
    import comfy.model_management
    import node_helpers

    from ..pvtt_train.models.wan_vace import latent_region, pack_mask, reference_canvas

    check_inputs(template, mask)
    frames, height, width = template.shape[:3]
    mask = mask[None] if mask.ndim == 2 else mask
    region = (mask.expand(frames, -1, -1) > 0.5).to(torch.float32)[..., None].cpu()  # [F,H,W,1]
    video = template[..., :3].float().cpu()
    inactive = vae.encode((video - 0.5) * (1 - region) + 0.5)
    reactive = vae.encode((video - 0.5) * region + 0.5)
    background = vae.encode(video)
    canvas = (reference_canvas(product[:1, ..., :3].float().cpu(), height, width) + 1) / 2  # [1,3,H,W] in 0..1
    reference = vae.encode(canvas.permute(0, 2, 3, 1))
    zeros = comfy.latent_formats.Wan21().process_out(torch.zeros_like(reference))
    control = torch.cat([torch.cat([reference, zeros], dim=1), torch.cat([inactive, reactive], dim=1)], dim=2)
    pixel_mask = region.permute(3, 0, 1, 2)[None]  # [1,1,F,H,W]
    packed = pack_mask(pixel_mask, SPATIAL, TEMPORAL)[0]
    ref_frames = reference.shape[2]
    packed = torch.cat([torch.zeros_like(packed[:, :ref_frames]), packed], dim=1)[None]
    values = {"vace_frames": [control], "vace_mask": [packed], "vace_strength": [strength]}
    positive = node_helpers.conditioning_set_values(positive, values, append=True)
    negative = node_helpers.conditioning_set_values(negative, values, append=True)
    latent_frames = background.shape[2] + ref_frames
    latent = torch.zeros([1, LATENT_CHANNELS, latent_frames, height // SPATIAL, width // SPATIAL],
                         device=comfy.model_management.intermediate_device())
    reinjection = {"background": background, "region": latent_region(pixel_mask, SPATIAL, TEMPORAL),
                   "reference": reference, "reference_frames": ref_frames}
    return positive, negative, {"samples": latent}, ref_frames, reinjection
