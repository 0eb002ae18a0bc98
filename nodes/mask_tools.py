"""PVTT masking tools: make, adjust, check and fit the product mask without leaving ComfyUI.

Designers rarely have a frame-accurate mask video at the template's exact size. These nodes draw
one from a box, grow, shrink or feather it, show it over the clip, and fit a LoadImage mask (or one
of another size) to the video; what cannot be fitted safely is refused with a message that says
how to fix it, rather than guessed at.

Masks follow ComfyUI: MASK [frames, height, width] in 0..1, white (1) = the product to replace.
torch and kornia are imported when a node runs, so loading the pack stays cheap.
"""

from __future__ import annotations

SHAPES = ["box", "ellipse"]
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0)}
MATCH_MODES = ["resize", "error"]
#: Slack on "x + width <= 1": widget values such as 0.3 + 0.7 do not add up to exactly 1.0.
EDGE_TOLERANCE = 1e-6


class PVTTMaskFromBox:
    DESCRIPTION = ("Draws a product mask from a box (or the ellipse inside it) given as fractions of the frame, the "
                   "same on every frame of the connected video. Quick for a product that stays roughly in place.")
    CATEGORY = "PVTT/masking"
    FUNCTION = "draw"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The mask [frames, height, width] at the video's size: 1 (white) inside the shape, 0 outside.",)

    @classmethod
    def INPUT_TYPES(cls):
        def fraction(default, what):
            return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": what})

        return {"required": {
            "video": ("IMAGE", {"tooltip": "The clip the mask is for: it sets the frame count and the size."}),
            "x": fraction(0.25, "Left edge of the box, as a fraction of the frame width (0 = left, 1 = right)."),
            "y": fraction(0.25, "Top edge of the box, as a fraction of the frame height (0 = top, 1 = bottom)."),
            "width": fraction(0.5, "Box width as a fraction of the frame width; x + width must be at most 1."),
            "height": fraction(0.5, "Box height as a fraction of the frame height; y + height must be at most 1."),
            "shape": (SHAPES, {"tooltip": "box fills the rectangle; ellipse fills the ellipse inscribed in it."}),
        }}

    def draw(self, video, x, y, width, height, shape):
        frames, rows, cols = video_size(video)
        check_box(x, y, width, height)
        mask = box_mask(rows, cols, x, y, width, height, shape).to(video.device)
        if not mask.any():
            raise input_error(f"the box covers no pixel of the {cols}x{rows} frame; make width and height at least "
                              f"{1 / cols:.3f} and {1 / rows:.3f} (one pixel)")
        return (mask.expand(frames, -1, -1).contiguous(),)


class PVTTMaskGrow:
    DESCRIPTION = ("Grows (positive grow_px) or shrinks (negative) the mask by whole pixels on every frame, then "
                   "optionally feathers its edge outwards with a Gaussian blur. Grow to cover the old product's rim "
                   "and small mask errors; shrink to pull a loose mask in.")
    CATEGORY = "PVTT/masking"
    FUNCTION = "grow"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The adjusted mask, same shape as the input, values 0..1 (soft only where feathered).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK", {"tooltip": "The product mask (white = product), one frame or one per video frame."}),
            "grow_px": ("INT", {"default": 4, "min": -64, "max": 64, "step": 1,
                                "tooltip": "Pixels to grow the white region by (a square grows by this on every "
                                           "side); negative values shrink it. 0 leaves the shape alone."}),
            "feather_px": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 32.0, "step": 0.5,
                                     "tooltip": "Soften the edge outwards (Gaussian sigma in pixels); the inside "
                                                "stays fully white. 0 keeps a hard edge, which Template Transfer "
                                                "reads most predictably."}),
        }}

    def grow(self, mask, grow_px, feather_px):
        from ..pvtt_train.sampling.composite import grow_mask, soft_mask

        mask = as_frames(mask)
        return (soft_mask(grow_mask(mask, grow_px), 0, feather_px).contiguous(),)


class PVTTMaskPreview:
    DESCRIPTION = ("Tints the mask over the video so you can check, frame by frame, that it covers the product before "
                   "running Template Transfer. Connect the output to Preview Image or PVTT Save Video.")
    CATEGORY = "PVTT/masking"
    FUNCTION = "overlay"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    OUTPUT_TOOLTIPS = ("The video with the mask tinted over it (soft mask values give a lighter tint).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": ("IMAGE", {"tooltip": "The template clip the mask belongs to."}),
            "mask": ("MASK", {"tooltip": "The product mask: one frame per video frame, or one frame for all, at the "
                                         "video's size (fit other sizes with PVTT Match Mask to Video)."}),
            "color": (list(COLOURS), {"tooltip": "Tint colour; pick one that stands out from the product."}),
            "opacity": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "How strongly the tint covers the masked pixels: 0 = invisible, "
                                             "1 = solid colour."}),
        }}

    def overlay(self, video, mask, color, opacity):
        import torch

        from ..pvtt_train.sampling.composite import blend

        video = checked_video(video)
        frames, rows, cols = video.shape[:3]
        alpha = opacity * fit_mask(as_frames(mask), frames, rows, cols, resize=False)
        tint = torch.tensor(COLOURS[color], dtype=video.dtype, device=video.device)
        return (blend(tint, video, alpha).clamp(0, 1),)


class PVTTMatchMask:
    DESCRIPTION = ("Fits a mask to the video: a single mask (e.g. from the core Load Image node) is repeated on every "
                   "frame, and a mask of another size is resized and made clean black/white again. Refuses masks it "
                   "cannot fit safely (another frame count, NaN values, nothing white) with a message saying why.")
    CATEGORY = "PVTT/masking"
    FUNCTION = "match"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The mask as [video frames, video height, video width], ready for Template Transfer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": ("IMAGE", {"tooltip": "The template clip: the mask is fitted to its frame count and size."}),
            "mask": ("MASK", {"tooltip": "The product mask (white = product): one frame, or one per video frame, at "
                                         "any size."}),
            "mode": (MATCH_MODES, {"tooltip": "resize: scale a mask of another size to the video and re-threshold it "
                                              "at 0.5. error: stop instead, to catch a mask made for another clip."}),
        }}

    def match(self, video, mask, mode):
        frames, rows, cols = video_size(video)
        mask = as_frames(mask)
        fitted = fit_mask(mask, frames, rows, cols, resize=mode == "resize")
        check_not_empty(fitted, mask)
        return (fitted,)


def input_error(message: str) -> Exception:
    """PVTT's InputError, imported on use so that loading the pack does not import pvtt_train."""
    from ..pvtt_train.errors import InputError

    return InputError(message)


def video_size(video) -> tuple[int, int, int]:
    """(frames, height, width) of a valid IMAGE batch; anything else is refused before it fails deep in torch
    (the same checks every PVTT node applies to clips, see ``checked_video``)."""
    return tuple(checked_video(video).shape[:3])


def as_frames(mask, name: str = "mask"):
    """A MASK as float32 [frames, height, width] in 0..1: core LoadImage gives [1, H, W], some nodes a bare
    [H, W] or [F, H, W, 1]. Wrong types, NaN and other value ranges are refused (``validation.mask_frames``)."""
    from ..pvtt_train.validation import mask_frames

    return mask_frames(mask, name)


def checked_video(video, name: str = "video"):
    """An IMAGE batch as float32 in 0..1, or a refusal that says how to get one (``validation.image_batch``)."""
    from ..pvtt_train.validation import image_batch

    return image_batch(video, name)


def check_box(x: float, y: float, width: float, height: float) -> None:
    """Refuse an empty box or one past the frame: either is almost always a typo, and clipping would hide it."""
    if width <= 0 or height <= 0:
        raise input_error(f"the box is empty (width {width}, height {height}); give width and height above 0, as "
                          f"fractions of the frame (1 = the full frame)")
    if min(x, y) < 0 or x + width > 1 + EDGE_TOLERANCE or y + height > 1 + EDGE_TOLERANCE:
        raise input_error(f"the box x={x}, y={y}, width={width}, height={height} reaches outside the frame; keep x, "
                          f"y >= 0, x + width <= 1 and y + height <= 1 (fractions of the frame)")


def box_mask(rows: int, cols: int, x: float, y: float, width: float, height: float, shape: str):
    """[rows, cols] float mask: 1 where a pixel's centre lies in the box (or the ellipse inscribed in it).

    Sampling pixel centres makes the area track the fractional box size instead of jumping by whole
    rows when the box edge crosses a pixel.
    """
    import torch

    ys = (torch.arange(rows) + 0.5)[:, None] / rows
    xs = (torch.arange(cols) + 0.5)[None, :] / cols
    if shape == "ellipse":
        inside = ((xs - x - width / 2) / (width / 2)) ** 2 + ((ys - y - height / 2) / (height / 2)) ** 2 <= 1
    else:
        inside = (xs >= x) & (xs < x + width) & (ys >= y) & (ys < y + height)
    return inside.float()


def fit_mask(mask, frames: int, rows: int, cols: int, resize: bool):
    """A [M, h, w] mask as [frames, rows, cols].

    One mask frame is used for every video frame. Any other frame count is refused: dropping or
    repeating frames would put the product in the wrong place in time without anyone noticing.
    """
    from ..pvtt_train.validation import check_mask_fits

    size = tuple(mask.shape[1:]) if resize else (rows, cols)  # "resize" fits any size; frames must agree
    check_mask_fits(mask, frames, *size)
    if tuple(mask.shape[1:]) != (rows, cols):
        mask = resize_mask(mask, rows, cols)
    return mask.expand(frames, -1, -1).contiguous()


def resize_mask(mask, rows: int, cols: int):
    """Resize a [M, h, w] mask and threshold it at 0.5, as Template Transfer reads masks.

    Shrinking averages each output pixel's area, so it turns white when most of what it covers is;
    growing copies the nearest pixel, so no grey rim appears for the threshold to move.
    """
    import torch.nn.functional as F

    shrinking = mask.shape[1] >= rows and mask.shape[2] >= cols
    out = F.interpolate(mask[:, None].float(), size=(rows, cols), mode="area" if shrinking else "nearest-exact")
    return (out[:, 0] > 0.5).float()


def check_not_empty(fitted, original) -> None:
    """An all-black mask gives Template Transfer nothing to replace; say whether resizing is to blame."""
    if float(fitted.max()) > 0.5:
        return
    if float(original.max()) > 0.5:
        raise input_error(f"the mask's white region vanished when resized from {original.shape[2]}x"
                          f"{original.shape[1]} to {fitted.shape[2]}x{fitted.shape[1]}: it is thinner than one "
                          f"video pixel. Grow it first with PVTT Mask Grow/Shrink/Feather, or draw it at the "
                          f"video's size")
    from ..pvtt_train.validation import check_mask_not_empty

    check_mask_not_empty(fitted)
