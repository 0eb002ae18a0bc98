"""What a designer could do without a model, scored beside it: paste the photo (as it is, or at the light
of each frame), fill flat, or change nothing.

Each baseline returns the final clip [F, H, W, 3]: its product inside the mask, the template's exact
pixels outside, composited by ``sampling.composite.background_preserve`` with Background Preserve's
defaults, exactly as the models' outputs are. ``warped_product`` is the one place the photo is warped onto
the mask, so a better warp (rotation-following, matted without fringes) replaces it for every baseline
at once.
"""

from __future__ import annotations

import numpy as np
import torch

from ..aligned_warp import aligned_warp
from ..conditioning import product_alpha
from ..light_match import clip_light_gain
from ..sampling.composite import background_preserve


def warped_product(product: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The product photo [H, W, 3] cut from its backdrop and placed on every frame's mask [F, H, W]: the
    best paste PVTT has (``aligned_warp``: moments' similarity transform, fringe-free matte), so a model
    is measured against the strongest model-free baseline, not the centroid-and-area paste."""
    return aligned_warp(product, mask)


def _inside_mask(fill: np.ndarray, template: np.ndarray, mask: np.ndarray) -> np.ndarray:
    clips = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (template, fill, mask)]
    return background_preserve(*clips).numpy()


def paste(template: np.ndarray, mask: np.ndarray, product: np.ndarray) -> np.ndarray:
    """The warped photo inside the mask, composited into the template."""
    return _inside_mask(warped_product(product, mask), template, mask)


def lit_paste(template: np.ndarray, mask: np.ndarray, product: np.ndarray) -> np.ndarray:
    """The warped photo at each frame's light, measured off the template's background
    (``light_match.clip_light_gain``): what PVTT hands a paste-channel model, and what such a model returns
    when it changes nothing, so it is the bar a model's own corrections have to clear."""
    gain = clip_light_gain(torch.from_numpy(np.ascontiguousarray(template, np.float32)),
                           torch.from_numpy(np.ascontiguousarray(mask, np.float32))).numpy()
    lit = np.clip(warped_product(product, mask) * gain[:, None, None, None], 0, 1)
    return _inside_mask(lit, template, mask)


def flat_fill(template: np.ndarray, mask: np.ndarray, product: np.ndarray) -> np.ndarray:
    """The mask filled with the product's mean colour (over its matte in the photo)."""
    alpha = product_alpha(product)
    mean = (product * alpha[..., None]).sum((0, 1)) / alpha.sum()
    return _inside_mask(np.broadcast_to(mean.astype(np.float32), template.shape), template, mask)


def unchanged(template: np.ndarray, mask: np.ndarray, product: np.ndarray) -> np.ndarray:
    """The template as it is: the old product stays."""
    return template.astype(np.float32, copy=True)


#: name -> (label, function), in table order.
BASELINES = {
    "paste": ("aligned paste", paste),
    "lit_paste": ("aligned paste at the template's light", lit_paste),
    "flat_fill": ("flat mean-colour fill", flat_fill),
    "template": ("unchanged template", unchanged),
}
