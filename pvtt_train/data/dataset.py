"""Reading a dataset written by ``prepare-data``: pre-encoded batches for training, pixels for evaluation.

``EncodedDataset`` opens the manifest and the shards (memory-mapped by safetensors, a tensor at a
time). ``DatasetStream`` is the training stream over its training split, resumable like the
synthetic ``TrainingStream``: ``position`` is the next example index of an endless sequence of
epochs, each a permutation drawn from ``(seed, epoch)``, so the same seed and position give the same
batches. Batches carry the stored ``Condition`` fields (``background``, ``region``, ``features``),
the ground-truth latents, the prompt embeddings and the uint8 pixels the pixel-space losses need
(as floats in 0..1); ``seed`` is the example's dataset index, the key of per-clip caches.

The held-out split is what gates and reports score, from its stored pixels through the model's own
``condition``, exactly as designer inputs are sampled.
"""

from __future__ import annotations

import functools

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..errors import InputError
from ..models.pvtt_model import Condition
from .batches import TrainingStream, condition_batch, heldout_batch
from .prepare import DATASET_FORMAT, MANIFEST

#: Stored tensors that are pixels (uint8 0..255 on disk, float 0..1 in a batch).
PIXEL_FIELDS = ("template", "mask", "reference", "target")
LATENT_FIELDS = ("background", "region", "features", "target_latent", "prompt_embeds")


class EncodedDataset:
    """A finished ``prepare-data`` folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise InputError(f"--data {self.folder}: no {MANIFEST} there; pass a folder written by "
                             f"`python -m pvtt_train prepare-data`, or 'synthetic'")
        text = path.read_text()
        try:
            self.manifest = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is damaged ({exc}); run prepare-data again into a new --out") from exc
        if self.manifest.get("key", {}).get("format") != DATASET_FORMAT:
            raise InputError(f"{path} is not a PVTT dataset manifest; run prepare-data to make one")
        if not self.manifest.get("complete"):
            raise InputError(f"--data {self.folder}: prepare-data did not finish it; run the same prepare-data "
                             f"command again to complete it (finished shards are kept)")
        #: Identifies the data (every shard's hash is in the manifest): recorded in a run's provenance.
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.examples = self.manifest["examples"]
        self.train = [i for i, e in enumerate(self.examples) if e["split"] == "train"]
        self.heldout = [i for i, e in enumerate(self.examples) if e["split"] == "heldout"]
        self.reference_slice = slice(*self.manifest["reference_slice"])
        self.video = self.manifest["key"]["video"]
        self._handles: dict[str, object] = {}

    def to_dict(self) -> dict:
        """The dataset's identity, for cache keys (independent of where the folder is)."""
        return {"kind": "dataset", "sha256": self.sha256, "encoder_sha256": self.manifest["key"]["encoder_sha256"]}

    def provenance(self) -> dict:
        """What a run trained on, for the exported students' ``provenance.data``."""
        return {**self.to_dict(), "path": str(self.folder.resolve()), "train_examples": len(self.train),
                "heldout_examples": len(self.heldout), "clips": len(self.manifest["key"]["clips"]),
                "skipped_clips": [e["clip"] for e in self.manifest["errors"]]}

    def check_ground_truth(self, losses: str) -> None:
        """Refuse, before a run starts, training clips without ground truth for ``losses`` that need it (the
        adversarial and truth losses): otherwise the first such clip the stream draws stops the run midway."""
        missing = sorted({self.examples[i]["clip"] for i in self.train if not self.examples[i].get("ground_truth")})
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise InputError(f"--data {self.folder}: {losses} need ground truth for every training clip, and "
                             f"{len(missing)} have none ({shown}); add their target.mp4 and run prepare-data again, "
                             f"or train without {losses}")

    def check_model(self, model_sha: str, what: str) -> None:
        """Refuse a model other than the one whose VAE and text encoder encoded the dataset."""
        if model_sha != self.manifest["key"]["encoder_sha256"]:
            raise InputError(f"--data {self.folder} was encoded with another model (sha "
                             f"{self.manifest['key']['encoder_sha256']}) than {what} (sha {model_sha}); its latents "
                             f"only fit that model. Run prepare-data with --model {what}.")

    def _tensor(self, example: int, name: str) -> torch.Tensor | None:
        entry = self.examples[example]
        handle = self._handles.get(entry["shard"])
        if handle is None:
            handle = self._handles[entry["shard"]] = safe_open(str(self.folder / entry["shard"]), framework="pt")
        key = f"{entry['index']}.{name}"
        return handle.get_tensor(key) if key in handle.keys() else None

    def load(self, indices) -> dict[str, torch.Tensor]:
        """A batch of examples (every field all of them have)."""
        indices = [int(i) for i in indices]
        batch: dict[str, torch.Tensor] = {"seed": torch.tensor(indices, dtype=torch.int64)}
        for name in (*LATENT_FIELDS, *PIXEL_FIELDS):
            parts = [self._tensor(i, name) for i in indices]
            if any(p is None for p in parts):
                continue
            stacked = torch.stack(parts)
            batch[name] = stacked.float() / 255 if name in PIXEL_FIELDS else stacked.float()
        return batch

    def negative_prompt_embeds(self) -> torch.Tensor | None:
        name = self.manifest.get("negative_prompt_file")
        if not name:
            return None
        with safe_open(str(self.folder / name), framework="pt") as fh:
            return fh.get_tensor("prompt_embeds").float()

    @functools.cached_property
    def negative_context(self) -> torch.Tensor | None:
        """The negative prompt's embedding, read once (every training batch guides against it)."""
        return self.negative_prompt_embeds()

    def heldout_batch(self, count: int) -> dict[str, torch.Tensor]:
        """Up to ``count`` held-out examples, in manifest order, with their pixels (``target`` only
        when every one of them has a ground truth)."""
        if len(self.heldout) < 2:
            raise InputError(f"--data {self.folder} has {len(self.heldout)} held-out clip window(s); gates and the "
                             f"report need at least 2 (a Fréchet distance needs a covariance). Run prepare-data "
                             f"with --heldout 2 or more.")
        batch = self.load(self.heldout[:count])
        if self.negative_context is not None:
            batch["negative_prompt_embeds"] = self.negative_context.expand(len(batch["seed"]), -1, -1)
        return batch


def dataset_condition(batch: dict[str, torch.Tensor], reference_slice: slice,
                      negative: torch.Tensor | None = None) -> Condition:
    """The stored Condition of a dataset batch, with its clips' prompt embeddings (and the dataset's
    negative prompt, which makes CFG guide on prompt vs negative prompt as WanVACEPipeline does)."""
    cond = Condition(background=batch["background"], region=batch["region"], features=batch["features"],
                     reference_slice=reference_slice)
    if "prompt_embeds" not in batch:
        return cond
    return cond.with_prompts(batch["prompt_embeds"], negative[None] if negative is not None and negative.ndim == 2
                             else negative)


class DatasetStream:
    """Endless, resumable batches of the training split; ``position`` is the next example index."""

    def __init__(self, dataset: EncodedDataset, batch_size: int, seed: int = 0, position: int = 0):
        self.dataset, self.batch_size, self.seed, self.position = dataset, batch_size, seed, position
        if not dataset.train:
            raise InputError(f"--data {dataset.folder} has no training examples")

    def _index(self, position: int) -> int:
        n = len(self.dataset.train)
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return self.dataset.train[int(order[offset])]

    def next(self) -> dict[str, torch.Tensor]:
        indices = [self._index(p) for p in range(self.position, self.position + self.batch_size)]
        self.position += self.batch_size
        return self.dataset.load(indices)


# --- one interface over both data sources (synthetic config or dataset) for the trainer, gates and report -------

def training_stream(data, batch_size: int, seed: int):
    """The training stream of ``data``: synthetic clips or the dataset's training split."""
    if isinstance(data, EncodedDataset):
        return DatasetStream(data, batch_size, seed=seed)
    return TrainingStream(data, batch_size, seed=seed)


def condition_of(model, batch: dict[str, torch.Tensor], data) -> Condition:
    """A batch's Condition: stored in a dataset batch, built from pixels for synthetic clips."""
    if "features" in batch:
        return dataset_condition(batch, data.reference_slice, data.negative_context)
    return condition_batch(model, batch)


def target_latents(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Ground truth in model space: stored for a dataset, encoded for synthetic clips."""
    if "target_latent" in batch:
        return batch["target_latent"]
    if "features" in batch:
        raise InputError("the adversarial and truth losses need ground truth for every training clip, and this "
                         "dataset has paired clips without target.mp4; add their targets, or train without "
                         "--adversarial and --weight truth")
    return model.encode(batch["target"])


def heldout_of(data, count: int, offset: int = 0) -> dict[str, torch.Tensor]:
    """Held-out evaluation clips as pixels: synthetic seeds from ``offset``, or the dataset's held-out
    split (where ``offset`` does not apply: gates and report score the same few real clips)."""
    if isinstance(data, EncodedDataset):
        return data.heldout_batch(count)
    return heldout_batch(data, count, offset=offset)


def open_data(spec: str | Path | None):
    """``--data``: 'synthetic' (None) or a prepare-data folder, opened."""
    if spec is None or str(spec) == "synthetic":
        return None
    return EncodedDataset(spec)
