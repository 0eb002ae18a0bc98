"""Fitting a designer's clip to a model's working size, and the result back onto the clip.

A model renders at one size (its trained resolution). A clip of another aspect ratio can reach it
three ways:

- ``crop``: the largest region of the clip with the model's aspect ratio, centred but shifted so the
  mask's bounding box (over all frames) stays inside it where it fits, is rendered; the result is
  pasted back into that region, and outside it the clip keeps the template's own pixels.
- ``pad``: the clip is letterboxed (black bars, an empty mask under them) to the model's aspect ratio,
  rendered, and the bars are cut off again, so the whole frame is rendered without distortion.
- ``stretch``: the clip is squeezed to the working size and stretched back (aspect ratio not kept),
  the behaviour of earlier versions.

Crop and pad keep the aspect ratio. Resampling is ``resize_video`` (area down, bilinear up) throughout,
so ``stretch`` gives exactly what earlier versions gave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .resize import resize_video

FITS = ("crop", "pad", "stretch")


@dataclass(frozen=True)
class FitPlan:
    """How a clip of ``clip`` (height, width) reaches a model of ``model`` (height, width).

    ``region`` is (top, left, height, width) of the clip that is rendered (crop; the whole clip
    otherwise); ``padding`` is (top, bottom, left, right) of the letterbox bars (pad; zeros otherwise).
    """

    mode: str
    clip: tuple[int, int]
    model: tuple[int, int]
    region: tuple[int, int, int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def rendered(self) -> tuple[int, int]:
        """(height, width) of what is resized to the working size: the crop, or the letterboxed clip."""
        top, bottom, left, right = self.padding
        return self.region[2] + top + bottom, self.region[3] + left + right

    @property
    def scale(self) -> float:
        """Upscale factor from the working size back to the clip (the larger of the two axes)."""
        (rh, rw), (mh, mw) = self.rendered, self.model
        return max(rh / mh, rw / mw)

    @property
    def effective_size(self) -> tuple[int, int]:
        """The working size spread over the whole clip: the resolution the model's pixels have there."""
        (rh, rw), (mh, mw), (ch, cw) = self.rendered, self.model, self.clip
        return max(1, round(mh * ch / rh)), max(1, round(mw * cw / rw))


def _aspect_box(height: int, width: int, model_h: int, model_w: int) -> tuple[int, int]:
    """(height, width) of the largest box inside height x width with the model's aspect ratio."""
    if width * model_h > height * model_w:  # the clip is wider than the model
        return height, max(1, min(width, round(height * model_w / model_h)))
    return max(1, min(height, round(width * model_h / model_w))), width


def _place(length: int, size: int, lo: int | None, hi: int | None) -> int:
    """Start of a window of ``size`` in ``length``, centred, moved to hold [lo, hi) where it fits."""
    start = (length - size) // 2
    if lo is not None:
        if hi - lo <= size:
            start = min(max(start, hi - size), lo)
        else:  # the mask is larger than the crop: centre the crop on it
            start = (lo + hi - size) // 2
    return min(max(start, 0), length - size)


def _bounds(mask: torch.Tensor | None, axis: int) -> tuple[int | None, int | None]:
    """[lo, hi) of the pixels above 0.5 along ``axis`` (1 = rows, 2 = columns) over all frames."""
    if mask is None:
        return None, None
    hits = (mask > 0.5).any(dim=0).any(dim=2 - axis).nonzero()
    if hits.numel() == 0:
        return None, None
    return int(hits.min()), int(hits.max()) + 1


def plan_fit(mode: str, clip: tuple[int, int], model: tuple[int, int], mask: torch.Tensor | None = None) -> FitPlan:
    """The plan for ``mode`` (one of ``FITS``); ``mask`` [F,H,W] steers the crop."""
    if mode not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {mode!r}")
    (height, width), (model_h, model_w) = clip, model
    whole = (0, 0, height, width)
    if mode == "stretch":
        return FitPlan(mode, clip, model, whole)
    if mode == "crop":
        ch, cw = _aspect_box(height, width, model_h, model_w)
        top = _place(height, ch, *_bounds(mask, 1))
        left = _place(width, cw, *_bounds(mask, 2))
        return FitPlan(mode, clip, model, (top, left, ch, cw))
    # pad: grow the short side to the model's aspect ratio
    if width * model_h > height * model_w:
        extra = max(0, round(width * model_h / model_w) - height)
        return FitPlan(mode, clip, model, whole, (extra // 2, extra - extra // 2, 0, 0))
    extra = max(0, round(height * model_w / model_h) - width)
    return FitPlan(mode, clip, model, whole, (0, 0, extra // 2, extra - extra // 2))


def to_model(plan: FitPlan, video: torch.Tensor) -> torch.Tensor:
    """[F,H,W,C] at the clip's size to [F,h,w,C] at the working size, following ``plan``."""
    top, left, rh, rw = plan.region
    x = video[:, top: top + rh, left: left + rw]
    if any(plan.padding):
        pt, pb, pl, pr = plan.padding
        x = F.pad(x.permute(0, 3, 1, 2), (pl, pr, pt, pb)).permute(0, 2, 3, 1)  # black bars, empty mask
    return resize_video(x, *plan.model)


def from_model(plan: FitPlan, rendered: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """The working-size result [F,h,w,C] back at the clip's size: the crop pasted into ``template``
    [F,H,W,C], or the letterbox bars cut off, or stretched back."""
    up = resize_video(rendered, *plan.rendered)
    if plan.mode == "pad":
        pt, pb, pl, pr = plan.padding
        return up[:, pt: up.shape[1] - pb, pl: up.shape[2] - pr]
    if plan.mode == "crop" and plan.region != (0, 0, *plan.clip):
        top, left, rh, rw = plan.region
        out = template.to(up.dtype).clone()
        out[:, top: top + rh, left: left + rw] = up
        return out
    return up
