"""Optional perceptual loss: LPIPS (AlexNet) when it can run offline, else a multi-scale SSIM + L1 distance.

LPIPS needs the ``lpips`` package and torchvision's ImageNet AlexNet weights. PVTT never
downloads anything while training, so LPIPS is chosen only when the weights already sit in the
torch hub cache; they are read from that file directly (the trunk is built random, then
overwritten), so no code path can fetch them. Otherwise the distance is computed on features
from ``model_encode`` (the VAE encoder for a latent model, nothing for the pixel-space tiny
model): a normalised L1 + (1 - SSIM) over a few average-pooled scales. ``kind`` says which runs,
so a training log records it.

Inputs are videos [B, 3, F, H, W] in -1..1 (pixel model space).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import nn

LPIPS_KIND = "lpips-alex"
FALLBACK_KIND = "latent-ms-ssim"
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1 file
LPIPS_MIN_SIDE = 64  # AlexNet's strided stem needs >= 32 px; LPIPS was calibrated on 64 px patches
#: Dynamic range for SSIM's constants and the L1 normaliser: pixels span -1..1, normalised latents ~ +-1 std.
VALUE_RANGE = 2.0


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS


def _lpips_importable() -> bool:
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False
    return True


def select_kind() -> str:
    """``LPIPS_KIND`` if the AlexNet weights are on disk and ``lpips`` imports, else ``FALLBACK_KIND``."""
    return LPIPS_KIND if alexnet_weights_path().is_file() and _lpips_importable() else FALLBACK_KIND


def _build_lpips(weights: Path) -> nn.Module:
    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation note on lpips' ``pretrained=`` argument
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # random trunk: nothing to fetch
    alexnet = torch.load(weights, map_location="cpu", weights_only=True)
    # lpips splits torchvision's ``features.<i>`` into ``slice<n>.<i>`` (same layer indices).
    model.net.load_state_dict({k: alexnet["features." + k.split(".", 1)[1]] for k in model.net.state_dict()})
    return model.eval().requires_grad_(False)


def _frames(video: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] to [B*F, C, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


def multiscale_distance(a: torch.Tensor, b: torch.Tensor, scales: int = 3, window: int = 5) -> torch.Tensor:
    """Mean over scales of ``L1 / VALUE_RANGE + 1 - SSIM`` between feature videos [B, C, F, h, w].

    Each scale halves h and w (average pooling) while both stay >= ``2 * window``; the SSIM window
    shrinks to an odd size that fits when the input itself is small.
    """
    a, b = _frames(a), _frames(b)
    terms = []
    for level in range(scales):
        if level:
            if min(a.shape[-2:]) < 2 * window:
                break
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        side = min(a.shape[-2:])
        win = min(window, side if side % 2 else side - 1)
        ssim = kornia.metrics.ssim(a, b, win, max_val=VALUE_RANGE).mean()
        terms.append((a - b).abs().mean() / VALUE_RANGE + 1 - ssim)
    return torch.stack(terms).mean()


class PerceptualLoss(nn.Module):
    """``forward(x, y)``: a scalar perceptual distance between videos, differentiable in both.

    ``model_encode`` maps videos [B, 3, F, H, W] in -1..1 to features [B, C, f, h, w] with the graph
    kept (for ``WanVACEPVTT`` that is ``_encode``; its public ``encode`` runs without grad). It is
    used only by the fallback; ``None`` compares the videos themselves.
    """

    def __init__(self, model_encode: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.kind = select_kind()
        self.model_encode = model_encode
        self.lpips = _build_lpips(alexnet_weights_path()) if self.kind == LPIPS_KIND else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.lpips is not None:
            fx, fy = _frames(x), _frames(y)
            side = min(fx.shape[-2:])
            if side < LPIPS_MIN_SIDE:
                size = [round(s * LPIPS_MIN_SIDE / side) for s in fx.shape[-2:]]
                fx = F.interpolate(fx, size=size, mode="bilinear", align_corners=False)
                fy = F.interpolate(fy, size=size, mode="bilinear", align_corners=False)
            return self.lpips(fx, fy).mean()
        if self.model_encode is not None:
            x, y = self.model_encode(x), self.model_encode(y)
        return multiscale_distance(x, y)
