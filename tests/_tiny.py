"""Tiny random-weight PVTT checkpoints for fast tests (seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import torch

from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
from pvtt_train.models.pvtt_model import TINY_BACKBONE, WanConcatPVTT

MICRO_BACKBONE = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 16,
    "freq_dim": 16,
    "ffn_dim": 32,
    "num_layers": 1,
    "rope_max_seq_len": 32,
}
#: The embedded model's backbone cut to one small layer: a teacher loss to compute in milliseconds.
SMALL_BACKBONE = {**TINY_BACKBONE, "num_layers": 1, "ffn_dim": 32}


def paste_batch(seed: int = 0, b: int = 2) -> dict:
    """A random teacher-training batch [b, 5 frames, 8x8]: template, a box mask, the paste inside it and a
    target that is the template outside the box and 0.9 x the paste inside."""
    g = torch.Generator().manual_seed(seed)
    template = torch.rand(b, 5, 8, 8, 3, generator=g)
    mask = torch.zeros(b, 5, 8, 8)
    mask[:, :, 2:6, 3:7] = 1
    paste = torch.rand(b, 5, 8, 8, 3, generator=g) * mask[..., None]
    target = template * (1 - mask[..., None]) + paste * 0.9
    return {"template": template, "mask": mask, "paste": paste, "target": target}


def micro_teacher(path: Path, seed: int = 0, steps: int = 3, cfg: float = 1.5,
                  data: SyntheticConfig | None = None) -> Path:
    """A random micro teacher checkpoint with the metadata `pvtt_train teacher` writes (trained on ``data``)."""
    torch.manual_seed(seed)
    model = WanConcatPVTT(MICRO_BACKBONE)
    data = data or SyntheticConfig()
    save_checkpoint(path, model, {
        "stage": "teacher",
        "schedule": {"shift": 1.0, "num_train_timesteps": 1000},
        "sampler": {"kind": "euler_cfg", "steps": steps, "cfg": cfg},
        "video": {"frames": data.frames, "height": data.height, "width": data.width},
        "conditioning": {"reference": "aligned_paste", "uncond": "zero_reference"},
        "provenance": {"trainer": "tests", "data": data.to_dict()},
    })
    return path


def load_micro_teacher(tmp_path: Path, **kw):
    return load_checkpoint(micro_teacher(tmp_path / "micro_teacher.safetensors", **kw))


def micro_encoders(folder: Path) -> tuple[Path, Path]:
    """Randomly initialised identity and video encoders (the gates' and losses' frozen nets) for fast tests."""
    from pvtt_train.eval.video_encoder import VideoEncoder, save_video_encoder
    from pvtt_train.identity.encoder import IdentityEncoder, save_identity_encoder

    torch.manual_seed(0)
    identity = save_identity_encoder(folder / "identity.safetensors", IdentityEncoder(width=8, dim=16), {})
    video = save_video_encoder(folder / "video.safetensors", VideoEncoder(dim=8, channels=(8, 8, 8, 8)), {})
    return identity, video
