"""``prepare-data``: encode a folder of clips once through the frozen model into a training dataset.

Distillation runs the student, the critic and the teacher many times on every clip; the VAE and the
text encoder are frozen, so their outputs are computed here once and stored: the model's
``Condition`` of each window (background latents, latent region and the control features, for
Wan-VACE the VACE control ``[inactive, reactive, packed mask]`` with the reference frame in front),
the ground-truth latents where the clip has them, and the prompt embeddings (plus the negative
prompt's, once). The pixels the pixel-space losses need go along as uint8: the mask and the
template at working size (temporal loss flows, evaluation) and the product photo letterboxed to the
clip (identity loss); the ground-truth pixels only for held-out clips (evaluation).

Layout of ``--out``::

    manifest.json                  what is in it (see ``Manifest``), written atomically after each shard
    negative_prompt.safetensors    the negative prompt's embeddings, when prompts are encoded
    shard-00000.safetensors        up to ``shard_clips`` clips; tensors named ``<index>.<field>``

Resumable: each shard is written atomically and then recorded in the manifest with its size and
hash; a rerun keeps the shards that check out and starts at the first clip not in one, so a kill
loses at most the shard being encoded. Shards are deterministic, so the finished dataset is the
same bit for bit however often it was interrupted. A clip that cannot be used is reported with its
name and the problem, and then skipped or the run stopped (``on_error``); skipped clips are listed
in the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import InputError
from ..models.checkpoint import LoadedModel, file_sha256, write_atomic
from .clips import MAX_WINDOWS, ClipError, ClipSource, Example, discover_clips, read_clip

DATASET_FORMAT = "pvtt-dataset"
DATASET_VERSION = 1
MANIFEST = "manifest.json"
NEGATIVE_FILE = "negative_prompt.safetensors"
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: ``encode_text(prompts) -> [B, L, text_dim]``: the frozen text encoder (UMT5 for Wan-VACE).
TextEncoder = Callable[[list[str]], torch.Tensor]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def encoder_identity(model) -> str:
    """A hash of what the stored encodings depend on: the architecture's conditioning layout and the
    frozen VAE's config and weights (not the transformer's), so a dataset serves every teacher that
    shares the VAE, whether loaded from a folder or a single file."""
    config = {k: v for k, v in model.config().items() if k not in ("transformer", "backbone_config", "context_tokens")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    vae = getattr(model, "vae", None)
    for name, tensor in sorted((vae.state_dict() if vae is not None else {}).items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def letterbox(reference: np.ndarray, height: int, width: int) -> np.ndarray:
    """A product photo [Hr,Wr,3] in 0..1 scaled to fit height x width, centred on white (as Wan-VACE
    prepares its reference image); the stored, batchable form of the reference."""
    import cv2

    scale = min(height / reference.shape[0], width / reference.shape[1])
    new_h, new_w = max(1, int(reference.shape[0] * scale)), max(1, int(reference.shape[1] * scale))
    canvas = np.ones((height, width, 3), np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(reference.astype(np.float32), (new_w, new_h),
                                                              interpolation=cv2.INTER_AREA)
    return canvas


def to_uint8(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.clip(np.round(x * 255), 0, 255).astype(np.uint8)))


@torch.no_grad()
def encode_example(model, example: Example, heldout: bool, height: int, width: int, dtype: torch.dtype,
                   prompt_embeds: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], slice]:
    """The stored fields of one window (see the module docstring) and the layout of its
    ``Condition.features`` (the slice that holds the product reference). The reference is rounded
    to its stored uint8 values first, so the stored pixels give back exactly the stored condition."""
    canvas = to_uint8(letterbox(example.reference, height, width)).numpy().astype(np.float32) / 255
    template, mask = torch.from_numpy(example.template)[None], torch.from_numpy(example.mask)[None]
    cond = model.condition(template, mask, torch.from_numpy(canvas)[None])
    tensors = {"background": cond.background[0].to(dtype), "region": cond.region[0].to(dtype),
               "features": cond.features[0].to(dtype), "template": to_uint8(example.template),
               "mask": to_uint8(example.mask), "reference": to_uint8(canvas)}
    if example.target is not None:
        tensors["target_latent"] = model.encode(torch.from_numpy(example.target)[None])[0].to(dtype)
        if heldout:
            tensors["target"] = to_uint8(example.target)
    if prompt_embeds is not None:
        tensors["prompt_embeds"] = prompt_embeds.to(dtype)
    return {k: v.contiguous() for k, v in tensors.items()}, cond.reference_slice


@dataclass
class Pending:
    """Clips encoded since the last shard was written."""

    sources: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _settings_key(loaded: LoadedModel, sources: list[ClipSource], heldout: list[str], negative_prompt: str,
                  shard_clips: int, seed: int, dtype: str, max_windows: int, text: bool) -> dict:
    return {"format": DATASET_FORMAT, "version": DATASET_VERSION, "encoder_sha256": encoder_identity(loaded.model),
            "model_arch": loaded.metadata.get("model", {}).get("arch"), "video": dict(loaded.video),
            "clips": [s.name for s in sources], "heldout": heldout, "negative_prompt": negative_prompt,
            "shard_clips": shard_clips, "seed": seed, "dtype": dtype, "max_windows": max_windows,
            "prompt_embeds": text}


def _valid_shards(out: Path, manifest: dict) -> list[dict]:
    """The leading shards of an earlier run whose files are there and unchanged."""
    kept = []
    for entry in manifest.get("shards", []):
        if entry["file"] is not None:
            path = out / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
                break
        kept.append(entry)
    return kept


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise InputError(f"--out {out} is a folder with other files and no {MANIFEST}; prepare-data writes only "
                             f"into an empty or new folder (or one it wrote before). Choose another --out.")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is damaged ({exc}); delete it to encode the dataset again from the start") from exc


def prepare_dataset(clips: Path, out: Path, loaded: LoadedModel, encode_text: TextEncoder | None = None, *,
                    negative_prompt: str = "", heldout: int = 2, shard_clips: int = 8, on_error: str = "skip",
                    seed: int = 0, dtype: str = "float32", max_windows: int = MAX_WINDOWS,
                    progress: bool = True, say: Callable[[str], None] = print) -> dict:
    """Encode ``clips`` into ``out`` (resuming an interrupted run); returns the manifest."""
    clips, out = Path(clips), Path(out)
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    model = loaded.model.eval()
    frames, height, width = (loaded.video[k] for k in ("frames", "height", "width"))
    sources = discover_clips(clips)
    if heldout >= len(sources):
        raise InputError(f"--heldout {heldout}: {clips} has only {len(sources)} clips, and training needs at least "
                         f"one; lower --heldout or add clips")
    order = np.random.default_rng(seed).permutation(len(sources))
    heldout_names = sorted(sources[i].name for i in order[:heldout])
    key = _settings_key(loaded, sources, heldout_names, negative_prompt, shard_clips, seed, dtype, max_windows,
                        encode_text is not None)

    previous = _read_manifest(out)
    if previous is not None and previous.get("key") != key:
        raise InputError(f"--out {out} holds a dataset prepared from other clips, model or settings; use a new --out "
                         f"(or the same clips, --model and options to finish it)")
    shards = _valid_shards(out, previous) if previous else []
    out.mkdir(parents=True, exist_ok=True)

    store = STORAGE_DTYPES[dtype]
    if encode_text is not None:
        negative = encode_text([negative_prompt])[0].to(store).contiguous()
        write_atomic(out / NEGATIVE_FILE, lambda tmp: save_file({"prompt_embeds": negative}, tmp))
    reference_slice = None

    def write_manifest(complete: bool) -> dict:
        manifest = {
            "key": key, "complete": complete, "shards": shards,
            "examples": [e for s in shards for e in s["examples"]],
            "errors": [e for s in shards for e in s["errors"]],
            "reference_slice": reference_slice or (previous or {}).get("reference_slice"),
            "negative_prompt_file": NEGATIVE_FILE if encode_text is not None else None,
        }
        text = json.dumps(manifest, indent=1)
        write_atomic(out / MANIFEST, lambda tmp: Path(tmp).write_text(text))
        return manifest

    def flush(pending: Pending) -> None:
        index = len(shards)
        name = None
        if pending.examples:
            name = shard_name(index)
            tensors = dict(pending.tensors)
            write_atomic(out / name, lambda tmp: save_file(tensors, tmp, metadata={"format": DATASET_FORMAT}))
        for e in pending.examples:
            e["shard"] = name
        shards.append({"file": name, "bytes": (out / name).stat().st_size if name else 0,
                       "sha256": file_sha256(out / name) if name else None, "sources": pending.sources,
                       "examples": pending.examples, "errors": pending.errors})
        write_manifest(complete=False)

    done = {name for s in shards for name in s["sources"]}
    todo = [s for s in sources if s.name not in done]
    if done:
        say(f"resuming: {len(shards)} shard(s) with {len(done)} clip(s) kept, {len(todo)} clip(s) to encode")
    pending = Pending()
    bar = tqdm(total=len(sources), initial=len(sources) - len(todo), desc="prepare-data", unit="clip",
               disable=not progress)
    try:
        for source in todo:
            is_heldout = source.name in heldout_names
            try:
                examples = read_clip(source, frames, height, width, max_windows, seed)
                prompts = [e.prompt for e in examples]
                embeds = encode_text(prompts) if encode_text is not None else None
                encoded = []
                for i, example in enumerate(examples):
                    try:
                        tensors, cond_slice = encode_example(model, example, is_heldout, height, width, store,
                                                             None if embeds is None else embeds[i])
                    except ValueError as exc:  # the model refuses the clip shape, with the numbers
                        raise ClipError(source.name, str(exc)) from exc
                    encoded.append(tensors)
                    reference_slice = [cond_slice.start or 0, cond_slice.stop]
            except ClipError as exc:
                if on_error == "stop":
                    raise InputError(f"{exc}. Fix or remove the clip, or pass --on-error skip; the shards "
                                     f"finished so far are kept, so rerunning continues from there.") from exc
                say(f"skipped {exc}")
                pending.errors.append({"clip": source.name, "error": exc.problem})
            else:
                for example, tensors in zip(examples, encoded):
                    index = len(pending.examples)
                    pending.examples.append({"name": example.name, "clip": example.clip, "index": index,
                                             "split": "heldout" if is_heldout else "train",
                                             "ground_truth": example.target is not None,
                                             "self_supervised": example.self_supervised, "prompt": example.prompt})
                    pending.tensors.update({f"{index}.{k}": v for k, v in tensors.items()})
            pending.sources.append(source.name)
            bar.update(1)
            if len({e["clip"] for e in pending.examples}) >= shard_clips:
                flush(pending)
                pending = Pending()
        if pending.sources:
            flush(pending)
    finally:
        bar.close()
    manifest = write_manifest(complete=True)
    if not any(e["split"] == "train" for e in manifest["examples"]):
        raise InputError(f"{clips}: no training clip could be used (see the errors above); fix the clips and run "
                         f"prepare-data again")
    return manifest

