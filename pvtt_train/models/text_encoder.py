"""Text prompts to Wan's UMT5 embeddings, exactly as diffusers' ``WanVACEPipeline`` computes them.

A Wan-VACE diffusers folder carries ``tokenizer/`` (T5 fast tokenizer) and ``text_encoder/``
(``UMT5EncoderModel``, 5.7 B parameters for UMT5-XXL). PVTT uses them only to turn prompts into
``[N, 512, text_dim]`` context embeddings, the way the stock pipeline does: the text is cleaned
(ftfy, HTML unescaping, whitespace), tokenised with padding and truncation to
``max_sequence_length`` (512), encoded with its attention mask, and every position past the
prompt's own tokens is set to zero.

The encoder is frozen (eval, no gradients), loaded from disk only (safetensors, never
downloaded), and freed as soon as the prompts are encoded: it is far larger than the 1.3B
transformer and is needed once per prompt. Embeddings are kept in a small in-memory cache keyed
by the encoder files and the prompt, so each prompt is encoded once per process.
"""

from __future__ import annotations

import gc
import html
import logging
import re
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError

logger = logging.getLogger(__name__)

#: The stock pipeline's prompt length (``WanVACEPipeline.__call__``'s ``max_sequence_length``).
MAX_SEQUENCE_LENGTH = 512
TOKENIZER_DIR, TEXT_ENCODER_DIR = "tokenizer", "text_encoder"
#: Embeddings kept per process (each is 512 x text_dim floats: 8 MiB at UMT5-XXL's 4096).
CACHE_ENTRIES = 32

_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_warned_no_ftfy = False


def has_text_encoder(folder: str | Path) -> bool:
    """Whether a diffusers folder ships the tokenizer and text encoder (some PVTT folders leave them out)."""
    folder = Path(folder)
    return (folder / TOKENIZER_DIR).is_dir() and (folder / TEXT_ENCODER_DIR / "config.json").is_file()


def conditioning_metadata(folder: Path) -> dict:
    """The ``conditioning`` metadata of a Wan-VACE folder: with a text encoder, CFG is prompt vs negative
    prompt with the reference in both branches (as WanVACEPipeline); without one, it drops the reference."""
    if not has_text_encoder(folder):
        return {"reference": "vace_reference_frame", "uncond": "no_reference_frame"}
    return {"reference": "vace_reference_frame", "uncond": "negative_prompt",
            "text_encoder": {"folder": str(Path(folder).resolve()), "max_sequence_length": MAX_SEQUENCE_LENGTH}}


def clean_prompt(text: str) -> str:
    """The pipeline's ``prompt_clean``: ftfy's repairs, HTML entities unescaped twice, whitespace collapsed.

    ftfy is a PVTT requirement; without it the other two steps still run (identical for plain text),
    with one warning.
    """
    global _warned_no_ftfy
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        if not _warned_no_ftfy:
            logger.warning("ftfy is not installed: prompts are cleaned without its text repairs (pip install ftfy)")
            _warned_no_ftfy = True
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def encode_prompts(folder: str | Path, prompts: list[str], device: str | torch.device = "cpu",
                   max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
    """UMT5 embeddings [N, max_sequence_length, text_dim] (float32, CPU) of ``prompts``, from the cache
    where possible; the encoder is loaded only for prompts not seen before, and freed afterwards."""
    folder = Path(folder)
    identity = encoder_identity(folder)
    keys = [(identity, max_sequence_length, p) for p in prompts]
    missing = list(dict.fromkeys(p for k, p in zip(keys, prompts) if k not in _cache))
    if missing:
        tokenizer, encoder = load_text_encoder(folder, device)
        try:
            fresh = run_encoder(tokenizer, encoder, missing, max_sequence_length)
        finally:
            del tokenizer, encoder
            release_memory(device)
        for prompt, embeds in zip(missing, fresh):
            _remember((identity, max_sequence_length, prompt), embeds)
    for key in keys:
        _cache.move_to_end(key)
    return torch.stack([_cache[k] for k in keys])


def encoder_identity(folder: Path) -> tuple:
    """What makes two encoders the same: the resolved folder and the size and time of every file in it."""
    if not has_text_encoder(folder):
        raise CheckpointError(f"{folder} has no {TOKENIZER_DIR}/ and {TEXT_ENCODER_DIR}/ (the UMT5 text encoder), so "
                              f"it cannot encode a prompt. Point PVTT to the complete Wan-VACE diffusers folder the "
                              f"model came from (sample --text-encoder FOLDER).")
    files = sorted(p for d in (TOKENIZER_DIR, TEXT_ENCODER_DIR) for p in (folder / d).iterdir() if p.is_file())
    return (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def load_text_encoder(folder: Path, device: str | torch.device = "cpu"):
    """The folder's tokenizer and frozen UMT5 encoder, from disk, safetensors only."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR, local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(folder, subfolder=TEXT_ENCODER_DIR, local_files_only=True,
                                                   use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: the text encoder could not be loaded ({exc}). PVTT loads only .safetensors "
                              f"weights from disk; copy the complete tokenizer/ and text_encoder/ folders.") from exc
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


@torch.no_grad()
def run_encoder(tokenizer, encoder, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """``WanVACEPipeline._get_t5_prompt_embeds``: padded, truncated, masked, zero past each prompt's tokens."""
    cleaned = [clean_prompt(p) for p in prompts]
    tokens = tokenizer(cleaned, padding="max_length", max_length=max_sequence_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    full = tokenizer(cleaned, add_special_tokens=True)["input_ids"]
    for prompt, ids in zip(cleaned, full):
        if len(ids) > max_sequence_length:
            logger.warning("prompt of %d tokens truncated to %d (as the stock pipeline does): %.60s...", len(ids),
                           max_sequence_length, prompt)
    device = next(encoder.parameters()).device
    mask = tokens.attention_mask.to(device)
    hidden = encoder(tokens.input_ids.to(device), mask).last_hidden_state
    lengths = mask.gt(0).sum(1)
    kept = torch.arange(max_sequence_length, device=device)[None] < lengths[:, None]
    return torch.where(kept[..., None], hidden, torch.zeros_like(hidden)).float().cpu()


def release_memory(device: str | torch.device) -> None:
    """Give the dropped encoder's memory back now (UMT5-XXL holds about 11 GiB in bf16), not at the next GC."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _remember(key: tuple, embeds: torch.Tensor) -> None:
    _cache[key] = embeds
    while len(_cache) > CACHE_ENTRIES:
        _cache.popitem(last=False)


#: CFG's unconditional branch: the negative prompt (reference kept), or the prompt without the reference.
GUIDANCE_MODES = ("prompt", "reference")


def text_encoder_folder(metadata: dict, override: str | Path | None = None) -> Path | None:
    """Where a checkpoint's text encoder is: ``override``, else the folder its conditioning metadata
    names (a student carries its teacher's), else None (a model that takes no text)."""
    if override is not None:
        return Path(override)
    folder = (metadata.get("conditioning", {}).get("text_encoder") or {}).get("folder")
    return Path(folder) if folder else None


def guidance_mode(metadata: dict, override: str | None = None) -> str:
    """``override`` or the checkpoint's own: prompt guidance for models conditioned on UMT5 prompts."""
    if override is not None:
        if override not in GUIDANCE_MODES:
            raise InputError(f"guidance mode must be one of {GUIDANCE_MODES}, got {override!r}")
        return override
    return "prompt" if metadata.get("conditioning", {}).get("uncond") == "negative_prompt" else "reference"


def prompt_embeddings(metadata: dict, prompt: str | None, negative_prompt: str | None, guidance: str | None = None,
                      text_encoder: str | Path | None = None, device: str | torch.device = "cpu"):
    """(context [1,L,D], negative context [1,L,D] or None) for ``Condition.with_prompts``, or (None, None)
    for a model that takes no text (it keeps its own context, and the text is ignored).

    As in WanVACEPipeline, a missing prompt or negative prompt is the empty string. With reference
    guidance there is no negative branch, so the negative prompt is not encoded.
    """
    folder = text_encoder_folder(metadata, text_encoder)
    if folder is None:
        return None, None
    mode = guidance_mode(metadata, guidance)
    length = (metadata.get("conditioning", {}).get("text_encoder") or {}).get("max_sequence_length",
                                                                              MAX_SEQUENCE_LENGTH)
    texts = [prompt or ""] + ([negative_prompt or ""] if mode == "prompt" else [])
    embeds = encode_prompts(folder, texts, device, length)
    return embeds[:1], (embeds[1:] if mode == "prompt" else None)
