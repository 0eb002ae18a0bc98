"""``python -m pvtt_train identity-encoder`` (train and save) and ``identity-eval`` (held-out AUC).

``register`` adds both to the main parser's subcommands; they use its ``--threads``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_identity_encoder(args) -> None:
    import torch

    from ..models.checkpoint import write_atomic
    from .encoder import read_identity_metadata, save_identity_encoder
    from .train import train_identity_encoder

    torch.set_num_threads(args.threads)
    encoder, report = train_identity_encoder(minutes=args.minutes, steps=args.steps, seed=args.seed,
                                             batch_size=args.batch_size, lr=args.lr, eval_clips=args.eval_clips,
                                             log=print)
    out = save_identity_encoder(Path(args.out), encoder, report)
    text = json.dumps(read_identity_metadata(out), indent=2, sort_keys=True)
    write_atomic(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text + "\n"))
    print(json.dumps(report, indent=2))
    print(f"identity encoder written to {out} (report: {out.with_suffix('.json')})")


def cmd_identity_eval(args) -> None:
    import torch

    from ..errors import CheckpointError
    from .encoder import load_identity_encoder
    from .train import evaluate_identity_encoder

    torch.set_num_threads(args.threads)
    try:
        encoder = load_identity_encoder(args.encoder)
    except CheckpointError as exc:
        raise CheckpointError(f"--encoder: {exc}") from exc
    report = evaluate_identity_encoder(encoder, clips=args.clips, first=args.first)
    print(json.dumps(report, indent=2))


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli_args import LEARNING_RATE, SEED, number, out_file, whole
    from ..paths import SHIPPED_MODELS

    # Each clip's negatives are the other clips of its batch, and an AUC needs other clips to compare with.
    clips = whole(2, " (each clip is compared with the others)")
    p = subparsers.add_parser("identity-encoder", help="train the product identity encoder (contrastive, synthetic)")
    # The shipped file's name (``encoder.SHIPPED_IDENTITY_ENCODER``), without importing torch here.
    p.add_argument("--out", default=str(SHIPPED_MODELS / "pvtt_identity_encoder.safetensors"), type=out_file(),
                   help="the encoder .safetensors to write (default: the shipped encoder's path)")
    p.add_argument("--minutes", type=number(0, meaning=" (0 = no limit)"), default=5.5,
                   help="wall-clock budget for training; 0 = none")
    p.add_argument("--steps", type=whole(1), default=400,
                   help="optimizer steps (the run stops at whichever budget ends)")
    p.add_argument("--batch-size", type=clips, default=48, help="clips per step")
    p.add_argument("--lr", type=LEARNING_RATE, default=3e-3, help="AdamW learning rate (default %(default)g)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the initialisation and the training clips")
    p.add_argument("--eval-clips", type=clips, default=256, help="held-out clips for the AUC report")
    p.set_defaults(func=cmd_identity_encoder)

    p = subparsers.add_parser("identity-eval", help="ROC AUC of an identity encoder on held-out synthetic clips")
    p.add_argument("--encoder", default=None,
                   help="a .safetensors identity encoder or a CLIP/DINOv2 folder (default: the shipped encoder)")
    p.add_argument("--clips", type=clips, default=256, help="held-out clips to score")
    p.add_argument("--first", type=whole(0), default=0, help="offset into the held-out seed range")
    p.set_defaults(func=cmd_identity_eval)
