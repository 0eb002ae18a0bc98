"""One call from designer inputs to a generated clip: the API the ComfyUI nodes and the CLI share.

Inputs may have any size and length. They are resized to the checkpoint's trained resolution,
processed in overlapping windows of its trained frame count, cross-faded where they overlap
(``sampling.frame_windows``), and the result is resized back, so the caller composites at full resolution.

A model with a text encoder (Wan-VACE) is prompted like the stock pipeline: the prompt and the
negative prompt are encoded once (cached) and CFG guides on one against the other; a model
without one (the embedded model) ignores the text and says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .aligned_warp import aligned_warp
from .conditioning import aligned_paste
from .detail_transfer import add_photo_detail, paste_composite, working_size_paste
from .data.warp_paste import lit_paste
from .errors import InputError
from .light_match import clip_light_gain
from .media.fit import from_model, plan_fit, to_model
from .media.resize import resize_video  # noqa: F401  (re-exported: callers and tests use pipeline.resize_video)
from .models.checkpoint import LoadedModel
from .models.text_encoder import prompt_embeddings
from .paste_correction import CorrectionSum
from .sampling.frame_windows import default_overlap, frame_windows, window_weights
from .sampling.samplers import require_finite, sample_from_metadata
from .validation import check_output_memory, clip_and_mask, product_photo

logger = logging.getLogger(__name__)
_told_no_text: set[str] = set()


def check_inputs(template, mask, reference) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The designer's inputs as float32 (template [F,H,W,3], mask [F or 1,H,W], photo [H,W,3]), or an
    InputError that names the input, the problem and the fix (see ``validation``)."""
    template, mask = clip_and_mask(template, mask, "template video", "the template video")
    return template, mask, product_photo(reference, "product image")


@torch.no_grad()
def transfer(loaded: LoadedModel, template: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
             steps: int | None = None, seed: int = 0, preserve_background: bool = True,
             callback: Callable[[int, int, torch.Tensor], None] | None = None, prompt: str | None = None,
             negative_prompt: str | None = None, guidance: float | None = None, guidance_mode: str | None = None,
             text_encoder=None, window_overlap: int | None = None,
             photo_detail: bool = True, fit: str = "stretch") -> torch.Tensor:
    """Generate the template clip with the new product; returns [F,H,W,3] in 0..1 at input size.

    ``reference`` is the product photo [H,W,3] (or an IMAGE batch, whose first image is used).
    ``guidance`` is the CFG scale (None: the checkpoint's); ``guidance_mode`` "prompt" or
    "reference" picks CFG's unconditional branch (None: the checkpoint's); ``text_encoder`` is the
    Wan-VACE folder holding it when the checkpoint's recorded one has moved. ``window_overlap`` is the
    number of frames consecutive windows share and cross-fade (None: ``default_overlap``; 0: windows
    that only touch, as before). ``photo_detail`` adds, inside the mask, the fine detail of the product
    photo warped onto the mask (``aligned_warp``) that the model's working size cannot hold
    (``detail_transfer``); it changes nothing when the clip is no larger than the working size.
    A model with a paste channel (the embedded one) is given that same warp shrunk to its working size
    (``detail_transfer.working_size_paste``), and each frame window gets it at the light of the window's
    first frame (``light_match``), since the model takes every window for the start of a clip; what it
    draws differently from that paste is applied to the full-size paste as a correction
    (``paste_correction``), so a model that changes nothing returns the lit full-size paste itself.
    ``fit`` is how the clip reaches the working size (``media.fit``): "crop" (the model's aspect ratio
    around the mask, pasted back), "pad" (letterboxed) or "stretch" (the default, as before).
    """
    template, mask, reference = check_inputs(template, mask, reference)
    check_output_memory(template)
    if mask.shape[0] == 1 and template.shape[0] > 1:
        mask = mask.expand(template.shape[0], -1, -1)
    model = loaded.model
    device = next(model.parameters()).device
    context, negative = prompt_embeddings(loaded.metadata, prompt, negative_prompt, guidance_mode, text_encoder,
                                          device)
    if context is None and (prompt or negative_prompt) and str(loaded.path) not in _told_no_text:
        _told_no_text.add(str(loaded.path))
        logger.info("%s takes no text prompt (it has no text encoder); the prompt is ignored", loaded.path.name)
    h, w, window = loaded.video["height"], loaded.video["width"], loaded.video["frames"]
    plan = plan_fit(fit, tuple(template.shape[1:3]), (h, w), mask)
    tmpl = to_model(plan, template)
    msk = (to_model(plan, mask[..., None])[..., 0] > 0.5).float()
    if float(msk.max()) <= 0.5:
        raise InputError(f"the mask vanishes at the model's {w}x{h} working size (its white area is too small); "
                         f"grow it with PVTT Mask Grow/Shrink/Feather or draw a larger product region")
    working = plan.effective_size  # the model's resolution over the whole clip
    detail = photo_detail and (template.shape[1] > working[0] or template.shape[2] > working[1])
    small_paste = corrections = None
    if detail:
        inside = (mask > 0.5).float()
        warp = torch.from_numpy(aligned_warp(reference.numpy(), inside.numpy()))
    if hasattr(model, "condition_from_paste"):  # a paste channel: PVTT places the photo (see light_match too)
        if detail:  # the full-size warp, shrunk, as in training with paste="supersampled_warp"
            small_paste = working_size_paste(warp, inside, lambda clip: to_model(plan, clip)) * msk[..., None]
            corrections = CorrectionSum(template.shape[0], h, w)
        else:
            small_paste = torch.from_numpy(aligned_paste(reference.numpy(), msk.numpy()))
        light, lit = clip_light_gain(tmpl, msk), lit_paste(loaded.metadata)
    elif detail:  # the model draws the product itself: the photo's detail at each frame's light is added on top
        paste = paste_composite(warp * clip_light_gain(template, mask).view(-1, 1, 1, 1), inside, template)
    total_frames = template.shape[0]
    overlap = default_overlap(window) if window_overlap is None else window_overlap
    if not 0 <= overlap < window:
        raise InputError(f"window_overlap {overlap} must be at least 0 and below the model's {window}-frame window")
    windows = frame_windows(total_frames, window, overlap)
    weights = window_weights(windows)
    out = torch.zeros(total_frames, h, w, 3)
    generator = torch.Generator().manual_seed(seed)
    for wi, (start, end) in enumerate(windows):
        # A clip shorter than the trained window is padded with its last frame, then trimmed.
        pad = window - (end - start)
        idx = torch.cat([torch.arange(start, end), torch.full((max(pad, 0),), end - 1)])
        if small_paste is None:  # the model fits the photo itself
            cond = model.condition(tmpl[None, idx].to(device), msk[None, idx].to(device), reference[None].to(device))
        else:
            # A model trained on lit pastes gets each frame's light; any other, the light of the window's first
            # frame, which it takes for its clip's start and carries on from by itself.
            gain = light[idx] if lit else light[start].expand(len(idx))
            given_paste = (small_paste[idx] * gain.view(-1, 1, 1, 1)).clamp(0, 1)
            cond = model.condition_from_paste(tmpl[None, idx].to(device), msk[None, idx].to(device),
                                              given_paste[None].to(device))
        cond = cond.with_prompts(context, negative)

        def step_cb(i, n, x0, wi=wi):
            if callback is not None:
                callback(wi * n + i, len(windows) * n, x0)

        x0 = sample_from_metadata(model, cond, loaded.metadata, steps, generator, preserve_background, step_cb,
                                  guidance, source=loaded.path)
        # The decoder (a VAE) can overflow where the latent did not; the clamp below would keep a NaN.
        decoded = require_finite(model.decode(x0)[0, : end - start].cpu(), loaded.path, "pixels")
        out[start:end] += weights[wi].view(-1, 1, 1, 1) * decoded
        if corrections is not None:
            n = end - start
            corrections.add(start, weights[wi], decoded, paste_composite(given_paste, msk[idx], tmpl[idx])[:n],
                            gain[:n])
    out = from_model(plan, out, template).clamp(0, 1)
    if corrections is not None:
        coverage = to_model(plan, inside[..., None])[..., 0] * msk
        return corrections.apply(out, warp, inside, coverage,
                                 lambda clip: from_model(plan, clip, torch.zeros_like(template)))
    if detail:
        out = add_photo_detail(out, paste, inside, lambda clip: from_model(plan, to_model(plan, clip), template))
    return out
