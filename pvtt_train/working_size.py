"""What a model really renders for a designer's clip, in one sentence for the canvas.

The model renders at its trained size (16x16 and 9 frames for the embedded model) in overlapping frame
windows; everything else is resampling. ``working_size_text`` says so plainly, including how large the
upscale is, so a designer with a 1080p clip knows what to expect before judging the result.
"""

from __future__ import annotations

from .media.fit import plan_fit
from .sampling.frame_windows import default_overlap, frame_windows

#: Upscale factor above which the designer is warned that the result will be soft.
SOFT_SCALE = 4.0


def working_size_text(model_size: tuple[int, int], window: int, clip_size: tuple[int, int], frames: int,
                      fit: str = "crop", mask=None, clips: int = 1, photo_detail: bool = True,
                      overlap: int | None = None) -> str:
    """E.g. "working size 16x16, 9-frame windows overlapping 3; your 256x256 clip is rendered at 16x16 and
    upscaled 16x (...)". Sizes are (height, width); printed width x height as designers read them."""
    (mh, mw), (ch, cw) = model_size, clip_size
    overlap = default_overlap(window) if overlap is None else overlap
    windows = frame_windows(frames, window, overlap)
    parts = [f"working size {mw}x{mh}, {window}-frame windows overlapping {overlap}"]
    plan = plan_fit(fit, clip_size, model_size, mask)
    clip = f"your {cw}x{ch} clip"
    top, left, rh, rw = plan.region
    if plan.clip == plan.model:
        told = f"{clip} is rendered at its own size"
    elif fit == "crop" and (rh, rw) != (ch, cw):
        told = (f"{clip} is cropped to {rw}x{rh} at x={left}, y={top} around the mask, rendered at {mw}x{mh} and "
                f"{_scaled(plan.scale)}; outside the crop the template's own pixels are kept")
    elif fit == "pad" and any(plan.padding):
        ph, pw = plan.rendered
        told = (f"{clip} is letterboxed to {pw}x{ph}, rendered at {mw}x{mh} and {_scaled(plan.scale)}, "
                f"then the bars are cut off")
    elif fit == "stretch" and rh * mw != rw * mh:
        told = f"{clip} is stretched to {mw}x{mh} (aspect ratio not kept), rendered and {_scaled(plan.scale)}"
    else:
        told = f"{clip} is rendered at {mw}x{mh} and {_scaled(plan.scale)}"
    parts.append(f"{told}; {frames} frames in {len(windows)} window{'s' if len(windows) != 1 else ''}")
    if clips > 1:
        parts.append(f"{clips} product photos give {clips} clips of {frames} frames, one after another "
                     f"({clips * frames} frames in all)")
    if plan.scale > SOFT_SCALE:
        detail = ("photo_detail adds the product photo's own detail inside the mask" if photo_detail
                  else "photo_detail is off, so nothing adds it back")
        parts.append(f"the output is {cw}x{ch}, but each of the model's pixels covers about {plan.scale:.3g}x"
                     f"{plan.scale:.3g} of its pixels: expect a soft product; {detail}, and PVTT Background "
                     f"Preserve keeps the template's exact pixels outside the mask")
    return "; ".join(parts)


def _scaled(scale: float) -> str:
    if scale <= 1:
        return "resized back"
    return f"upscaled {scale:.3g}x"
