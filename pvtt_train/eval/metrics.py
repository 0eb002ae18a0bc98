"""Quality metrics for template transfer, computed per clip and averaged over clips.

Clips are [B,F,H,W,3] in 0..1 and masks [B,F,H,W] (1 = product region).

- ``product_psnr`` / ``product_ssim``: inside the mask, against the ground truth.
- ``background_psnr``: outside the mask, against the ground truth (raw samples or composited).
- ``warp_error``: mean absolute difference between each frame and the previous frame warped by
  the *template's* optical flow (OpenCV Farneback), i.e. how well the output follows the
  template's motion without flicker. Lower is better.
"""

from __future__ import annotations

import cv2
import kornia
import numpy as np
import torch

MAX_PSNR = 100.0


def _masked_psnr(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR over the pixels where weight is 1; [B] tensor."""
    w = weight[..., None].expand_as(pred)
    err = ((pred - target) ** 2 * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1)
    return (10 * torch.log10(1.0 / err.clamp_min(10 ** (-MAX_PSNR / 10)))).clamp(max=MAX_PSNR)


def product_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    return float(_masked_psnr(pred, target, (mask > 0.5).float()).mean())


def background_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    return float(_masked_psnr(pred, target, (mask <= 0.5).float()).mean())


def product_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, window: int = 5) -> float:
    """Mean SSIM (kornia, Gaussian window) over product pixels, averaged per clip."""
    b, f, h, w, c = pred.shape
    p = pred.reshape(b * f, h, w, c).permute(0, 3, 1, 2)
    t = target.reshape(b * f, h, w, c).permute(0, 3, 1, 2)
    smap = kornia.metrics.ssim(p, t, window_size=window).mean(1).reshape(b, f, h, w)
    m = (mask > 0.5).float()
    return float(((smap * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)).mean())


def template_flow(template: np.ndarray) -> np.ndarray:
    """Backward flow for each consecutive pair of one clip: [F-1, H, W, 2] (frame t+1 -> t)."""
    gray = [cv2.cvtColor((f * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY) for f in template]
    return np.stack([
        cv2.calcOpticalFlowFarneback(gray[i + 1], gray[i], None, 0.5, 2, 5, 3, 5, 1.1, 0)
        for i in range(len(gray) - 1)
    ])


def warp_error(pred: torch.Tensor, template: torch.Tensor) -> float:
    """Mean |frame_{t+1} - warp(frame_t)| with the template's flow, averaged over clips."""
    errs = []
    for clip, tmpl in zip(pred.cpu().numpy(), template.cpu().numpy()):
        flows = template_flow(tmpl)
        h, w = clip.shape[1:3]
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        per = []
        for i, flow in enumerate(flows):
            warped = cv2.remap(clip[i], gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            per.append(np.abs(clip[i + 1] - warped).mean())
        errs.append(np.mean(per))
    return float(np.mean(errs))


def all_metrics(raw: torch.Tensor, composited: torch.Tensor, batch: dict) -> dict[str, float]:
    target, mask = batch["target"], batch["mask"]
    return {
        "product_psnr": product_psnr(raw, target, mask),
        "product_ssim": product_ssim(raw, target, mask),
        "background_psnr_raw": background_psnr(raw, target, mask),
        "background_psnr_composited": background_psnr(composited, target, mask),
        "warp_error": warp_error(composited, batch["template"]),
    }
