"""Sets of clips on one IMAGE: what PVTT Template Transfer makes from a batch of product photos.

Template Transfer renders N clips of F frames and outputs them concatenated ([N*F,H,W,3]) with
``frames_per_clip`` = F. Background Preserve compares them with the one F-frame template (repeated per
clip) and Save Video writes them as a numbered set, one file per clip. The tensor logic lives in
``pvtt_train.product_batch``; this module adapts it to the nodes' inputs.
"""

from __future__ import annotations


def clips_of(images, frames_per_clip):
    """The clips to save: ``images`` split into ``frames_per_clip``-frame clips (None or 0: one clip)."""
    from ..pvtt_train.product_batch import split_clips

    return split_clips(images, int(frames_per_clip or 0))


def template_for(generated, template_video, mask):
    """(template, mask) covering ``generated``: an F-frame template and its mask repeated per clip when
    ``generated`` holds N clips of F frames; unchanged otherwise (the nodes' shape checks then speak)."""
    from ..pvtt_train.product_batch import repeat_per_clip

    frames = generated.shape[0]
    if template_video.shape[0] == frames or template_video.shape[1:] != generated.shape[1:]:
        return template_video, mask
    repeated = repeat_per_clip(template_video, frames)
    if repeated.shape[0] != frames:
        return template_video, mask
    return repeated, repeat_per_clip(mask, frames) if mask.shape[0] == template_video.shape[0] else mask
