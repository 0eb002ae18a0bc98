"""``python -m pvtt_train prepare-data``: encode a folder of clips into a training dataset (``prepare.py``).

The clip folder layout is described in ``data/clips.py``. The model (``--model``: a diffusers
Wan-VACE folder or a PVTT checkpoint) provides the frozen VAE; a Wan-VACE folder with
``text_encoder/`` and ``tokenizer/`` also provides UMT5, which encodes each clip's prompt the way
``WanVACEPipeline`` does (512 tokens, zeros after the prompt's own length) and is freed afterwards.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..cli_args import SEED, check_model_file, out_folder, whole

def folder_text_encoder(folder: Path) -> Callable | None:
    """``encode_text(prompts) -> [B, 512, dim]``: the folder's UMT5 through the shared text encoder
    (cleaned, padded and masked as WanVACEPipeline does, cached), or None when it has none."""
    from ..models.text_encoder import encode_prompts, has_text_encoder

    if not (folder.is_dir() and has_text_encoder(folder)):
        return None
    return lambda prompts: encode_prompts(folder, prompts)


def cmd_prepare_data(args) -> None:
    import torch

    from ..models.loading import load_model
    from .clips import discover_clips
    from .prepare import prepare_dataset

    torch.set_num_threads(args.threads)
    check_model_file(args.model, "--model", "model", folder_ok=True)
    discover_clips(Path(args.clips))  # a wrong --clips fails before the model is loaded
    loaded = load_model(Path(args.model))
    encode_text = folder_text_encoder(Path(args.model))
    if encode_text is None and args.negative_prompt:
        print(f"--negative-prompt ignored: {args.model} has no text encoder (text_encoder/ and tokenizer/)")
    manifest = prepare_dataset(Path(args.clips), Path(args.out), loaded, encode_text,
                               negative_prompt=args.negative_prompt if encode_text else "", heldout=args.heldout,
                               shard_clips=args.shard_clips, on_error=args.on_error, seed=args.seed, dtype=args.dtype,
                               max_windows=args.max_windows)
    train = sum(e["split"] == "train" for e in manifest["examples"])
    print(f"wrote {args.out}: {train} training and {len(manifest['examples']) - train} held-out clip windows in "
          f"{sum(s['file'] is not None for s in manifest['shards'])} shard(s); "
          f"{len(manifest['errors'])} clip(s) skipped")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="encode a folder of clips (template, mask, product, prompt) into a "
                                            "training dataset for distill --data")
    p.add_argument("--clips", required=True, help="folder with one sub-folder per clip (see the README)")
    p.add_argument("--out", required=True, type=out_folder, help="dataset folder (rerun to resume)")
    p.add_argument("--model", required=True,
                   help="the teacher whose VAE (and text encoder) encodes the clips: a Wan-VACE folder or .safetensors")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="a clip that cannot be used: skip it (listed in the manifest) or stop")
    p.add_argument("--negative-prompt", default="", help="the negative prompt of CFG, encoded once")
    p.add_argument("--heldout", type=whole(0), default=2, help="clips kept out of training for gates and the report")
    p.add_argument("--shard-clips", type=whole(1), default=8, help="clips per shard (a kill loses at most one shard)")
    p.add_argument("--max-windows", type=whole(1), default=8, help="windows of the model's clip length per clip")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="storage type of the latents and embeddings")
    p.add_argument("--seed", type=SEED, default=0, help="held-out choice and self-supervised augmentation")
    p.set_defaults(func=cmd_prepare_data)
