"""PVTT Compare Models: the same inputs through up to four models, side by side, with their timings.

Designers choose between the teacher and the 16-, 8- and 4-step students by looking: this node
renders each one on the same clip, mask, product and seed, labels every panel with the model, its
steps and its wall time, and reports the speed-ups over the first model.
"""

from __future__ import annotations

import logging
import time

from .runtime import check_interrupted, progress_bar

log = logging.getLogger("[PVTT]")

#: Panels taller than this are scaled down so four of them fit a screen side by side.
MAX_PANEL_HEIGHT = 384
#: Height of the label strip over each panel: two lines (model; steps and seconds).
HEADER_PX = 34


class PVTTCompareModels:
    DESCRIPTION = ("Runs Template Transfer with up to four models on the same template, mask, product and seed, and "
                   "puts the results side by side, each labelled with its model, steps and seconds, so you can see "
                   "what fewer steps cost. The first model (usually the teacher) is the reference for the speed-ups "
                   "in the report. Timings include any first-run compilation of accelerated models.")
    CATEGORY = "PVTT/sampling"
    FUNCTION = "compare"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("side_by_side", "report")
    OUTPUT_TOOLTIPS = (("The clips side by side with a label strip on top, [frames, height, width, 3]; connect PVTT "
                       "Save Video."),
                       "One line per model: steps, seconds and speed-up over model_a.")

    @classmethod
    def INPUT_TYPES(cls):
        model_tip = "A model from PVTT Load Model (or PVTT Accelerate)."
        return {
            "required": {
                "template_video": ("IMAGE", {"tooltip": "The template clip (from PVTT Load Video)."}),
                "mask": ("MASK", {"tooltip": "The product mask, white = the product to replace, one per frame or one "
                                             "for all frames."}),
                "product_image": ("IMAGE", {"tooltip": "Photo of the new product (the first image of a batch is used)."}),
                "model_a": ("PVTT_MODEL", {"tooltip": model_tip + " The reference for the speed-ups, e.g. the teacher."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "The same starting noise for every model, so differences come from the "
                                            "models alone."}),
            },
            "optional": {
                "model_b": ("PVTT_MODEL", {"tooltip": model_tip}),
                "model_c": ("PVTT_MODEL", {"tooltip": model_tip}),
                "model_d": ("PVTT_MODEL", {"tooltip": model_tip}),
            },
        }

    def compare(self, template_video, mask, product_image, model_a, seed, model_b=None, model_c=None, model_d=None):
        from ..pvtt_train.pipeline import transfer
        from .managed_models import load_for_sampling

        models = [m for m in (model_a, model_b, model_c, model_d) if m is not None]
        bar = progress_bar(len(models))
        panels, rows = [], []
        for index, model in enumerate(models):
            load_for_sampling(model)  # through ComfyUI's model management, which may offload the previous one
            started = time.perf_counter()
            out = transfer(model, template_video, mask, product_image, seed=seed,
                           callback=lambda *_: check_interrupted())
            seconds = time.perf_counter() - started
            steps = model.sampler["steps"]
            rows.append((model.path.stem, steps, seconds))
            panels.append(labelled(out, [model.path.stem, f"{steps} steps, {seconds:.1f} s"]))
            bar.update_absolute(index + 1, len(models))
        report = "\n".join(f"{name}: {steps} steps, {seconds:.2f} s, {rows[0][2] / seconds:.1f}x the speed of "
                           f"{rows[0][0]}" for name, steps, seconds in rows)
        log.info("compare:\n%s", report)
        import torch

        return (torch.cat(panels, dim=2), report)


def labelled(video, lines: list[str]):
    """``video`` [F,H,W,3] scaled to at most MAX_PANEL_HEIGHT, under a dark strip carrying two ``lines``
    of text, sized to fit the panel's width."""
    import cv2
    import numpy as np
    import torch

    from ..pvtt_train.media.resize import resize_video

    frames, height, width, _ = video.shape
    if height > MAX_PANEL_HEIGHT:
        scale = MAX_PANEL_HEIGHT / height
        size = (MAX_PANEL_HEIGHT, max(1, round(width * scale)))
        video = resize_video(video, *size)
        height, width = size
    strip = np.full((HEADER_PX, width, 3), 30, np.uint8)  # OpenCV draws text on 8-bit images only
    font = cv2.FONT_HERSHEY_SIMPLEX
    widest = max(cv2.getTextSize(line, font, 1.0, 1)[0][0] for line in lines)
    scale = min(0.45, max(0.25, (width - 6) / widest))
    for row, line in enumerate(lines):
        cv2.putText(strip, line, (3, 14 + 16 * row), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    header = (torch.from_numpy(strip).to(video) / 255)[None].expand(frames, -1, -1, -1)
    return torch.cat([header, video], dim=1)
