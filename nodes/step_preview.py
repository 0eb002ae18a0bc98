"""The per-step preview of PVTT Template Transfer: cheap, and only when ComfyUI's preview method asks.

ComfyUI's own samplers preview each step according to ``--preview-method`` (``comfy.cli_args``
``args.preview_method``; see ``latent_preview.get_previewer``): ``none`` (ComfyUI's default) shows
nothing; ``auto``, ``latent2rgb`` and ``taesd`` show an image made from the current estimate. This
module does the same, and never decodes the clip:

- a latent model (Wan-VACE, 16-channel Wan 2.1 latents) is previewed with ComfyUI's Wan 2.1
  latent-to-RGB factors (``comfy/latent_formats.py`` ``Wan21.latent_rgb_factors``) on the middle
  latent frame: one 16x3 matrix product, no VAE (ComfyUI has no TAESD for Wan 2.1 either, so
  ``taesd`` also falls back to these factors there);
- the pixel-space embedded model is previewed from the middle frame of its estimate, which already is
  an image (16x16), upscaled to a visible size.

Outside ComfyUI (scripts, tests) there is no setting; ``auto`` is assumed, and the nodes' stand-in
progress bar drops the image.
"""

from __future__ import annotations

import logging

log = logging.getLogger("[PVTT]")

#: Longest side, in pixels, the preview image is enlarged to (nearest neighbour) when it is smaller.
PREVIEW_SIZE = 256

#: ComfyUI's ``comfy.latent_formats.Wan21.latent_rgb_factors`` (16 latent channels -> RGB) and bias.
WAN21_LATENT_RGB_FACTORS = [
    [-0.1299, -0.1692, 0.2932],
    [0.0671, 0.0406, 0.0442],
    [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328],
    [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925],
    [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636],
    [0.0680, 0.3019, 0.1128],
    [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699],
    [0.0060, -0.0633, 0.0005],
    [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
]
WAN21_LATENT_RGB_BIAS = [-0.1835, -0.0868, -0.3360]

_told: set[str] = set()


def preview_method() -> str:
    """ComfyUI's preview method ("none", "auto", "latent2rgb", "taesd"); "auto" outside ComfyUI."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return "auto"
    method = getattr(args, "preview_method", None)
    return str(getattr(method, "value", method) or "none")


def latent_to_rgb(x0):
    """Middle latent frame of normalised Wan 2.1 latents [B,16,f,h,w] to RGB [h,w,3] in 0..1."""
    import torch

    frame = x0[0, :, x0.shape[2] // 2].float()  # [16, h, w]
    factors = torch.tensor(WAN21_LATENT_RGB_FACTORS, device=frame.device)
    bias = torch.tensor(WAN21_LATENT_RGB_BIAS, device=frame.device)
    rgb = torch.nn.functional.linear(frame.movedim(0, -1), factors.T, bias)
    return ((rgb + 1) / 2).clamp(0, 1)  # the factors map to -1..1, as ComfyUI's preview_to_image reads them


def pixels_to_rgb(x0):
    """Middle frame of the pixel model's estimate [B,3,F,H,W] in -1..1 to RGB [H,W,3] in 0..1."""
    return ((x0[0, :, x0.shape[2] // 2].float().movedim(0, -1) + 1) / 2).clamp(0, 1)


def to_preview(rgb):
    """An RGB image [h,w,3] in 0..1 as ComfyUI's ("JPEG", PIL image, max size) preview, enlarged to be seen."""
    from PIL import Image

    image = Image.fromarray((rgb.cpu().numpy() * 255).round().astype("uint8"))
    scale = max(1, PREVIEW_SIZE // max(image.size))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return ("JPEG", image, PREVIEW_SIZE)


def step_previewer(loaded):
    """A function from a step's estimate x0 to a preview, or None when no preview is wanted or possible."""
    if preview_method() == "none":
        return None
    arch = getattr(loaded.model, "arch", None)

    def preview(x0):
        if arch == "wan_concat" or (arch is None and x0.shape[1] == 3):
            return to_preview(pixels_to_rgb(x0))
        if x0.shape[1] == len(WAN21_LATENT_RGB_FACTORS):
            return to_preview(latent_to_rgb(x0))
        key = f"{arch}:{x0.shape[1]}"
        if key not in _told:
            _told.add(key)
            log.info("no step preview for %d-channel latents (the latent-to-RGB factors are Wan 2.1's 16 channels)",
                     x0.shape[1])
        return None

    return preview
