"""Batches of synthetic examples as torch tensors, with a resumable data position.

Training draws seeds from ``[0, HELDOUT_SEED_BASE)``; evaluation uses seeds from
``HELDOUT_SEED_BASE`` on, so held-out clips are never seen in training.
"""

from __future__ import annotations

import numpy as np
import torch

from ..conditioning import aligned_paste
from ..errors import CheckpointError
from ..models.checkpoint import LoadedModel
from .synthetic import SyntheticConfig, SyntheticVideoGenerator

HELDOUT_SEED_BASE = 10_000_000


def training_data_config(loaded: LoadedModel) -> SyntheticConfig:
    """The synthetic data a checkpoint was trained on, from its provenance (for distillation and evaluation)."""
    data = loaded.metadata.get("provenance", {}).get("data")
    if not data:
        raise CheckpointError(f"{loaded.path.name} does not record synthetic data it was trained on "
                              f"(provenance.data), so there is no synthetic data to draw for it: pass --data "
                              f"DATASET (made by prepare-data), or use a teacher written by `pvtt_train teacher`.")
    return synthetic_config(data)


def synthetic_config(data: dict) -> SyntheticConfig:
    """A checkpoint's recorded ``provenance.data`` as the config it stands for (fields it predates take their
    defaults, so older checkpoints read as the data they were trained on)."""
    return SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def make_batch(generator: SyntheticVideoGenerator, seeds) -> dict[str, torch.Tensor]:
    """Examples for ``seeds`` plus their paste (the conditioning the model sees): the generator's own when
    its config renders one (``warp_paste``), else the aligned paste fitted at the working size."""
    batch = generator.batch(seeds)
    batch["seed"] = np.asarray(list(seeds), dtype=np.int64)
    if "paste" not in batch:
        batch["paste"] = np.stack([aligned_paste(r, m) for r, m in zip(batch["reference"], batch["mask"])])
    return to_torch(batch)


def condition_batch(model, batch: dict[str, torch.Tensor]):
    """The model's Condition for a batch, reusing its precomputed aligned paste when the model can."""
    if hasattr(model, "condition_from_paste") and "paste" in batch:
        return model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    return model.condition(batch["template"], batch["mask"], batch["reference"])


def heldout_batch(config: SyntheticConfig, count: int, offset: int = 0) -> dict[str, torch.Tensor]:
    gen = SyntheticVideoGenerator(config)
    return make_batch(gen, range(HELDOUT_SEED_BASE + offset, HELDOUT_SEED_BASE + offset + count))


class TrainingStream:
    """Endless stream of fresh training batches; ``position`` is the next example index."""

    def __init__(self, config: SyntheticConfig, batch_size: int, seed: int = 0, position: int = 0):
        self.generator = SyntheticVideoGenerator(config)
        self.batch_size = batch_size
        self.seed = seed
        self.position = position

    def next(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.position])
        seeds = rng.integers(0, HELDOUT_SEED_BASE, size=self.batch_size)
        self.position += self.batch_size
        return make_batch(self.generator, seeds)
