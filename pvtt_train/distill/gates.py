"""Stage gates: evaluate a stage's student and decide whether the run may go on.

Each stage is scored on the same held-out clips (``GATE_OFFSET``, disjoint from the report and
CFG-calibration clips) with the same noise: a Fréchet distance between its composited samples
and the ground truth in the features of a frozen video encoder (the project's shipped encoder by
default, or an I3D), plus product and raw background PSNR. The teacher (its own 50-step CFG
sampler) is scored once per run and cached on disk, keyed by checkpoint hash, clips, the composite
(``evaluate.COMPOSITE``) and how the run samples the teacher (``teacher_sampling``): composites cached under
another key are never reused.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.dataset import EncodedDataset, heldout_of
from ..data.synthetic import SyntheticConfig
from ..eval.evaluate import COMPOSITE, evaluation_composite, generate, warm_up
from ..eval.frechet import frechet_distance
from ..eval.metrics import background_psnr, product_psnr, product_ssim, warp_error
from ..eval.video_encoder import load_video_encoder
from ..models.checkpoint import LoadedModel, write_atomic
from ..models.loading import source_sha256
from .config import GateConfig
from .report import teacher_as_few_step

GATE_OFFSET = 20_000
CHUNK = 16


class GateFailed(RuntimeError):
    """A stage missed its acceptance criteria; ``report`` says which and by how much."""

    def __init__(self, stage: str, gate: dict):
        self.stage, self.gate = stage, gate
        failed = [c for c in gate["checks"] if not c["passed"]]
        lines = [f"  {c['name']}: {c['value']:.4f} (limit {c['limit']:.4f})" for c in failed]
        super().__init__(f"stage {stage} failed its gate:\n" + "\n".join(lines)
                         + "\nTrain the stage longer (--generator-steps), lower its student learning rate, or "
                           "pass --force to continue anyway (the students are still exported).")


def sample_metrics(raw: torch.Tensor, composited: torch.Tensor, batch: dict) -> dict:
    """Product fidelity needs the ground truth; without one (real paired clips) only the background
    (where the template is the truth) and, on real data, the temporal warp error are scored."""
    if "target" not in batch:
        return {"background_psnr_raw": background_psnr(raw, batch["template"], batch["mask"]),
                "warp_error": warp_error(composited, batch["template"])}
    return {"product_psnr": product_psnr(raw, batch["target"], batch["mask"]),
            "product_ssim": product_ssim(raw, batch["target"], batch["mask"]),
            "background_psnr_raw": background_psnr(raw, batch["target"], batch["mask"])}


class GateEvaluator:
    """Scores models on the gate clips; encodes the ground truth once."""

    def __init__(self, data: SyntheticConfig | EncodedDataset, clips: int = 64, encoder: str | None = None,
                 cache_dir: Path | None = None, seed: int = 0):
        self.batch = heldout_of(data, clips, offset=GATE_OFFSET)
        self.data_key = data.to_dict()
        self.encoder = load_video_encoder(encoder)
        self.encoder_name = str(encoder) if encoder else "pvtt_video_encoder (shipped)"
        # A dataset may hold fewer held-out clips than asked for: all of them are scored.
        self.cache_dir, self.seed, self.clips = cache_dir, seed, self.batch["template"].shape[0]
        # The distance is to the ground truth; real paired clips have none, so to the real template
        # videos: the distribution of real footage the samples should stay in.
        self.truth = self._features(self.batch["target"] if "target" in self.batch else self.batch["template"])
        self.videos: dict[str, torch.Tensor] = {}  # composited samples by model name, for strips

    @torch.no_grad()
    def _features(self, videos: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder.features(v) for v in videos.split(32)])

    def _generate(self, loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Samples of every gate clip, ``CHUNK`` clips per call (large batches are slower per clip on
        CPU); each chunk has its own seed, the same for every model."""
        warm_up(loaded, self.batch)
        raw, comp, seconds = [], [], 0.0
        for i, start in enumerate(range(0, self.clips, CHUNK)):
            chunk = {k: v[start:start + CHUNK] for k, v in self.batch.items()}
            out = generate(loaded, chunk, self.seed + i)
            raw.append(out.raw)
            comp.append(out.composited)
            seconds += out.seconds
        return torch.cat(raw), torch.cat(comp), seconds

    def score(self, loaded: LoadedModel, name: str) -> dict:
        raw, comp, seconds = self._generate(loaded)
        self.videos[name] = comp
        return self._summary(raw, comp, seconds)

    def repeated(self, repeat: int) -> GateEvaluator:
        """The same clips, truth and encoder under fresh sampling noise, to see how far the noise alone moves a
        score (``sampler-eval --repeats``). Each chunk is seeded ``seed + i``, so repeat ``r`` starts where
        ``r`` runs' chunks end: no clip's noise is drawn again, not even for another clip."""
        other = copy.copy(self)
        other.seed, other.videos = self.seed + repeat * len(range(0, self.clips, CHUNK)), {}  # _generate's chunks
        return other

    def score_clips(self, raw: torch.Tensor) -> dict:
        """Scores of ready-made clips of the gate clips [N,F,H,W,3] in pixels (an oracle's: no model, no
        time), composited as samples are."""
        return self._summary(raw, evaluation_composite(raw, self.batch["template"], self.batch["mask"]))

    def _summary(self, raw, composited, seconds: float | None = None) -> dict:
        """Fréchet distance and sample metrics, and the time per clip when the clips were ``seconds`` of sampling."""
        features = self._features(composited)
        scores = {"frechet_distance": frechet_distance(features, self.truth),
                  **sample_metrics(raw, composited, self.batch)}
        if seconds is not None:
            scores["seconds_per_clip"] = seconds / self.clips
        if "teacher" in self.videos and self.data_key.get("kind") == "dataset":
            # On real data the student is also compared with the teacher's own samples directly.
            scores["frechet_to_teacher"] = frechet_distance(features, self._features(self.videos["teacher"]))
        return scores

    def score_teacher(self, teacher: LoadedModel, sampling: dict | None = None) -> dict:
        """The teacher's scores, from the cache when this teacher was scored on these clips before;
        ``sampling`` (``teacher_sampling``) says how it is sampled when not as its file says."""
        signed = {"teacher": source_sha256(teacher.path), "clips": self.clips, "seed": self.seed,
                  "sampler": teacher.sampler, "offset": GATE_OFFSET, "chunk": CHUNK, "composite": COMPOSITE}
        if sampling:
            signed["sampling"] = sampling
        if self.data_key.get("kind") == "dataset":  # synthetic clips follow from the teacher; a dataset does not
            signed["data"] = self.data_key
        key = json.dumps(signed, sort_keys=True)
        path = None
        if self.cache_dir is not None:
            path = Path(self.cache_dir) / f"teacher-gate-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
            if path.exists():
                cached = load_file(str(path))
                self.videos["teacher"] = cached["composited"]
                return self._summary(cached["raw"], cached["composited"], float(cached["seconds"]))
        raw, comp, seconds = self._generate(teacher)
        self.videos["teacher"] = comp
        if path is not None:
            tensors = {"raw": raw.contiguous(), "composited": comp.contiguous(), "seconds": torch.tensor(seconds)}
            write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"key": key}))
        return self._summary(raw, comp, seconds)


def as_few_step(base: LoadedModel, model: torch.nn.Module, timesteps, shift: float) -> LoadedModel:
    """A student still in memory, wrapped with the metadata its sampler needs: ``base``'s, at the student's
    shift and with the few-step sampler at ``timesteps``."""
    return dataclasses.replace(teacher_as_few_step(base, timesteps, shift), model=model)


#: How far under the teacher's own raw background PSNR a stage may fall where that is under the fixed
#: floor (a paste-residual teacher, which weighs the product's interior over the background, scores
#: 33.5-34.8 dB against 35): 0.5 dB is about 12 % more squared error, the slack the Fréchet gates allow.
BACKGROUND_SLACK_DB = 0.5


def check_gate(gate: GateConfig, scores: dict, teacher: dict, previous: dict | None) -> dict:
    """Apply a stage's gate; returns {passed, checks: [{name, value, limit, passed}]}. The background floor is the
    gate's, or the teacher's own less ``BACKGROUND_SLACK_DB`` where that is lower: a student is not held to more
    than its teacher can do."""
    reference = teacher if gate.reference == "teacher" or previous is None else previous
    ref_name = "teacher" if reference is teacher else "previous stage"
    limit = gate.ratio * reference["frechet_distance"]
    checks = [{"name": f"frechet_distance <= {gate.ratio:g} x {ref_name}", "value": scores["frechet_distance"],
               "limit": limit, "passed": scores["frechet_distance"] <= limit}]
    if gate.min_background_psnr is not None:
        value, floor = scores["background_psnr_raw"], gate.min_background_psnr
        own = teacher.get("background_psnr_raw")
        if own is not None and own - BACKGROUND_SLACK_DB < floor:  # a floor the teacher (nearly) misses itself
            floor = own - BACKGROUND_SLACK_DB
            name = (f"background_psnr_raw > the teacher's {own:.2f} - {BACKGROUND_SLACK_DB:g} dB "
                    f"(under {gate.min_background_psnr:g} dB)")
        else:
            name = f"background_psnr_raw > {floor:g} dB"
        checks.append({"name": name, "value": value, "limit": floor, "passed": value > floor})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
