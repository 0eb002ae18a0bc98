"""The regression loss: teacher ODE trajectories cached at exactly the student's sigmas.

For a fixed pool of training clips, the teacher (with its CFG and the sampler's background
re-injection) integrates the flow ODE from noise with Euler steps on its own 50-step grid merged
with every student sigma of the run, so the trajectory passes *exactly* through each sigma a
student will see. The state at each of those sigmas and the final x0 are cached. The loss asks
the student to map the cached state at one of its sigmas to the teacher's x0 (x0 MSE), the ODE
regression CausVid uses and DMD2/CausVid users add against over-saturation.

One cache serves all stages of a run (the 16-step sigmas contain the 8- and 4-step ones). It is
written in chunks, each an atomic safetensors file, so a killed generation resumes chunk by chunk;
a cache whose key (teacher hash, sigmas, CFG, shift, data, pool, and the teacher's sampling shift and guide
when a run sets them: ``teacher_sampling``) differs is never reused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..data.batches import HELDOUT_SEED_BASE, make_batch
from ..data.dataset import EncodedDataset, condition_of
from ..data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from ..models.checkpoint import LoadedModel, write_atomic
from ..models.loading import source_sha256
from ..models.pvtt_model import Condition
from ..sampling.samplers import guided_velocity, initial_noise, reinject_background

#: Training seeds of the regression pool: a block of the training range the stream rarely hits.
POOL_SEED_BASE = HELDOUT_SEED_BASE - 1_000_000


def ode_grid(teacher_sigmas: list[float], cached: list[float], tol: float = 1e-6) -> list[tuple[float, int | None]]:
    """Descending Euler grid (ending at 0) = teacher grid U cached sigmas; each entry says which
    cached sigma it is (index into ``cached``) or None."""
    points: dict[float, int | None] = {}
    for s in teacher_sigmas:
        points[round(float(s), 9)] = None
    for i, s in enumerate(cached):
        near = [p for p in points if abs(p - s) < tol]
        for p in near:
            del points[p]
        points[round(float(s), 9)] = i
    points.setdefault(0.0, None)
    return sorted(points.items(), key=lambda kv: -kv[0])


@torch.no_grad()
def teacher_trajectory(teacher, cond: Condition, grid: list[tuple[float, int | None]], n_cached: int, cfg: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler ODE on ``grid``; returns (states at the cached sigmas [B,K,...], final x0 [B,...])."""
    noise = initial_noise(teacher, cond, generator)
    x = noise
    states: list[torch.Tensor | None] = [None] * n_cached
    for (sigma, slot), (sigma_next, _) in itertools.pairwise(grid):
        x = reinject_background(x, cond, sigma, noise)
        if slot is not None:
            states[slot] = x.clone()
        v = guided_velocity(teacher, x, sigma, cond, cfg)
        x = x + (sigma_next - sigma) * v
    if any(s is None for s in states):
        raise RuntimeError("the ODE grid missed a cached sigma; this is a bug in ode_grid")
    return torch.stack(states, 1), x


class TrajectoryCache:
    """Teacher ODE states at ``sigmas`` and final x0 for ``pool`` clips, generated once on disk."""

    def __init__(self, folder: Path, teacher: LoadedModel, data: SyntheticConfig | EncodedDataset,
                 sigmas: list[float], cfg: float, pool: int = 64, seed: int = 0, chunk: int = 16,
                 sampling: dict | None = None):
        self.teacher, self.data, self.cfg, self.chunk = teacher, data, cfg, chunk
        self.sigmas = sorted({round(float(s), 9) for s in sigmas}, reverse=True)
        if isinstance(data, EncodedDataset):
            # Pool clips are training examples (dataset indices), a seeded choice of the training split.
            order = np.random.default_rng(seed).permutation(len(data.train))[:pool]
            self.seeds = [data.train[int(i)] for i in order]
            self._examples = data.load
            seeds_key = self.seeds
        else:
            self.seeds = list(range(POOL_SEED_BASE + seed * pool, POOL_SEED_BASE + (seed + 1) * pool))
            clips = SyntheticVideoGenerator(data)
            self._examples = lambda seeds: make_batch(clips, seeds)
            seeds_key = [self.seeds[0], pool]
        self.key = {"teacher_sha256": source_sha256(teacher.path), "sigmas": self.sigmas, "cfg": cfg,
                    "schedule": teacher.schedule.to_dict(), "data": data.to_dict(), "seeds": seeds_key,
                    "teacher_steps": teacher.sampler.get("steps", 50)}
        if sampling:  # the guide changes every teacher call; the shift is in the schedule too
            self.key["sampling"] = sampling
        self.key_json = json.dumps(self.key, sort_keys=True)
        digest = hashlib.sha256(self.key_json.encode()).hexdigest()[:12]
        self.folder = Path(folder) / f"trajectories-{digest}"
        self._states: torch.Tensor | None = None
        self._x0: torch.Tensor | None = None

    def _chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk-{i:04d}.safetensors"

    def _complete(self, path: Path) -> bool:
        try:
            with safe_open(str(path), framework="pt") as fh:
                return (fh.metadata() or {}).get("key") == self.key_json
        except (OSError, SafetensorError):  # a truncated or foreign file: regenerate it
            return False

    def ensure(self, progress=None) -> TrajectoryCache:
        """Generate the chunks that are missing (``progress(done, total)`` after each); then load."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key_text = json.dumps(self.key, indent=1)
        write_atomic(self.folder / "key.json", lambda tmp: Path(tmp).write_text(key_text))
        model = self.teacher.model.eval()
        schedule = self.teacher.schedule
        scheduler = schedule.euler_scheduler()
        scheduler.set_timesteps(self.key["teacher_steps"])
        grid = ode_grid([float(s) for s in scheduler.sigmas], self.sigmas)
        chunks = range(0, len(self.seeds), self.chunk)
        for n, start in enumerate(chunks):
            path = self._chunk_path(n)
            if not (path.exists() and self._complete(path)):
                seeds = self.seeds[start:start + self.chunk]
                batch = self._examples(seeds)
                cond = condition_of(model, batch, self.data)
                gen = torch.Generator().manual_seed(int(seeds[0]))
                states, x0 = teacher_trajectory(model, cond, grid, len(self.sigmas), self.cfg, gen)
                tensors = {"states": states.contiguous(), "x0": x0.contiguous(), "seeds": torch.tensor(seeds)}
                write_atomic(path, lambda tmp, t=tensors: save_file(t, tmp, metadata={"key": self.key_json}))
            if progress is not None:
                progress(n + 1, len(chunks))
        parts = [load_file(str(self._chunk_path(n))) for n in range(len(chunks))]
        self._states = torch.cat([p["states"] for p in parts])
        self._x0 = torch.cat([p["x0"] for p in parts])
        return self

    def sigma_index(self, sigma: float) -> int:
        matches = [i for i, s in enumerate(self.sigmas) if abs(s - sigma) < 1e-6]
        if not matches:
            raise KeyError(f"sigma {sigma} is not cached (cached: {self.sigmas})")
        return matches[0]

    def sample(self, count: int, stage_sigmas: list[float], generator: torch.Generator) -> dict:
        """A regression batch: pool clips, one of the stage's sigmas each, the cached state and x0."""
        if self._states is None:
            raise RuntimeError("call ensure() before sampling the trajectory cache")
        idx = torch.randint(len(self.seeds), (count,), generator=generator)
        which = torch.randint(len(stage_sigmas), (count,), generator=generator)
        slots = torch.tensor([self.sigma_index(stage_sigmas[int(w)]) for w in which])
        batch = self._examples([self.seeds[int(i)] for i in idx])
        batch["x_t"] = self._states[idx, slots]
        batch["x0_teacher"] = self._x0[idx]
        batch["sigma"] = torch.tensor([stage_sigmas[int(w)] for w in which])
        return batch


def regression_loss(student, batch: dict, cond: Condition, schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 MSE between the student's prediction from the cached ODE state and the teacher's x0;
    returns (loss, the student's x0) so other losses can reuse the prediction."""
    x_t, sigma = batch["x_t"].to(cond.background), batch["sigma"].to(cond.background)
    v = student.velocity(x_t, sigma, cond)
    x0 = schedule.x0_from_velocity(x_t, v, sigma)
    target = batch["x0_teacher"].to(x0)
    return torch.nn.functional.mse_loss(x0.float(), target.float()), x0
