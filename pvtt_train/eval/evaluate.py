"""Teacher-vs-student evaluation on held-out synthetic clips, timed side by side in one run.

For each model the *whole* generation is timed: conditioning (including the aligned paste),
sampling with the checkpoint's own sampler, decoding and the pixel-space composite. Both models
run on the same inputs, batch and seed, in the same process, after one warm-up call each.

Quality retention (documented in the README): for each metric, student relative to teacher, with
higher = better — ``student / teacher`` for PSNR (in dB) and SSIM, ``teacher / student`` for the
warp error (lower is better). ``min`` is the smallest of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..data.batches import condition_batch
from ..data.dataset import EncodedDataset, heldout_of
from ..data.synthetic import SyntheticConfig
from ..models.checkpoint import LoadedModel
from ..sampling.autoguidance import AutoGuided
from ..sampling.composite import blend, soft_mask
from ..sampling.samplers import require_finite, sample_from_metadata
from .metrics import all_metrics

LOWER_IS_BETTER = {"warp_error"}


@dataclass
class Generated:
    raw: torch.Tensor  # [B,F,H,W,3] model output, before compositing
    composited: torch.Tensor
    seconds: float
    model_calls: int


def model_calls(metadata: dict, model=None) -> int:
    """Transformer evaluations per clip under the checkpoint's sampler (CFG doubles them, and so does
    autoguiding ``model``: each of its calls is the teacher's and the guide's)."""
    s = metadata["sampler"]
    guided = 2 if isinstance(model, AutoGuided) else 1
    if s["kind"] == "euler_cfg":
        return s["steps"] * (2 if s.get("cfg", 1.0) != 1.0 else 1) * guided
    return s["steps"] * guided


#: The composite the evaluation and the distillation gates score: the generated clip inside the mask grown
#: by 1 px and feathered outward (Gaussian sigma 1 px), the template elsewhere. The gates' thresholds were
#: calibrated on it. Designers get Background Preserve's tight composite (generated only inside the mask);
#: scored that way, the 16-step student of the old 60,100,150 budget missed its Fréchet gate (2.901 against a
#: limit of 2.878, 1.15 x the teacher's 2.503), because its product edge was no longer softened by the
#: background; today's 30,80,130 one scores 2.214 and would pass. Moving the gates over means re-measuring
#: every gate figure, so it is left for its own change (issue 14). Part of the gates' teacher-cache key, so
#: cached composites never outlive a change here.
COMPOSITE = {"fn": "soft_mask", "dilate": 1, "feather": 1.0}


def evaluation_composite(raw: torch.Tensor, template: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``raw`` over ``template`` with the ``COMPOSITE`` the gates are calibrated on."""
    return blend(raw, template, soft_mask(mask, COMPOSITE["dilate"], COMPOSITE["feather"]))


def generate(loaded: LoadedModel, batch: dict, seed: int) -> Generated:
    """Condition, sample, decode and composite (``COMPOSITE``) a batch; timed end to end."""
    model = loaded.model
    start = time.perf_counter()
    with torch.no_grad():
        cond = condition_batch(model, batch)  # the paste the model was trained with, as in training
        if "prompt_embeds" in batch:  # held-out dataset clips are sampled with their own prompts
            cond = cond.with_prompts(batch["prompt_embeds"], batch.get("negative_prompt_embeds"))
        x0 = sample_from_metadata(model, cond, loaded.metadata, generator=torch.Generator().manual_seed(seed),
                                  source=loaded.path)
        raw = require_finite(model.decode(x0), loaded.path, "pixels")
        comp = evaluation_composite(raw, batch["template"], batch["mask"])
    return Generated(raw=raw, composited=comp, seconds=time.perf_counter() - start,
                     model_calls=model_calls(loaded.metadata, model))


def warm_up(loaded: LoadedModel, batch: dict) -> None:
    """One forward pass so first-call allocation and kernel selection are not timed."""
    model = loaded.model
    with torch.no_grad():
        cond = model.condition(batch["template"][:1], batch["mask"][:1], batch["reference"][:1])
        x = torch.zeros_like(cond.background)
        model.velocity(x, torch.ones(1), cond)


def quality_retention(teacher: dict, student: dict) -> dict:
    ratios = {}
    for key, t in teacher.items():
        s = student[key]
        ratios[key] = (t / s) if key in LOWER_IS_BETTER else (s / t)
    ratios["min"] = min(v for v in ratios.values() if v == v)  # NaN (a metric without ground truth) is skipped
    return ratios


def scored(raw: torch.Tensor, composited: torch.Tensor, batch: dict) -> dict[str, float]:
    """``all_metrics``; clips without a ground truth (real paired clips) are scored outside the
    product against the template (the truth there) and their product metrics are NaN (unknown)."""
    if "target" in batch:
        return all_metrics(raw, composited, batch)
    metrics = all_metrics(raw, composited, {**batch, "target": batch["template"]})
    metrics["product_psnr"] = metrics["product_ssim"] = float("nan")
    return metrics


def evaluate(teacher: LoadedModel, student: LoadedModel, data: SyntheticConfig | EncodedDataset, count: int = 16,
             seed: int = 0, extra: dict[str, LoadedModel] | None = None) -> tuple[dict, dict[str, Generated], dict]:
    """Run teacher, student (and any ``extra`` models) on ``count`` held-out clips (synthetic, or a
    dataset's held-out split); returns (report, outputs by name, batch)."""
    batch = heldout_of(data, count)
    count = batch["template"].shape[0]
    frames, height, width = batch["template"].shape[1:4]
    models = {"teacher": teacher, "student": student, **(extra or {})}
    for loaded in models.values():
        warm_up(loaded, batch)
    outputs = {name: generate(loaded, batch, seed) for name, loaded in models.items()}
    metrics = {name: scored(g.raw, g.composited, batch) for name, g in outputs.items()}
    report = {
        "clips": count,
        "video": {"frames": frames, "height": height, "width": width},
        "speedup": outputs["teacher"].seconds / outputs["student"].seconds,
        "seconds": {name: round(g.seconds, 3) for name, g in outputs.items()},
        "model_calls_per_clip": {name: g.model_calls for name, g in outputs.items()},
        "teacher": metrics["teacher"],
        "student": metrics["student"],
        "quality_retention": quality_retention(metrics["teacher"], metrics["student"]),
        "threads": torch.get_num_threads(),
    }
    for name in extra or {}:
        report[name] = metrics[name]
    return report, outputs, batch


def save_grid(path, batch: dict, teacher: torch.Tensor, student: torch.Tensor, clips: int = 4,
              frames: tuple[int, ...] | None = None, scale: int = 8) -> None:
    """PNG grid, one row per (clip, frame): template | mask | reference | teacher | student | truth."""
    f_total = batch["template"].shape[1]
    truth = batch.get("target", batch["template"])  # real clips without ground truth show their template
    frames = frames or (0, f_total // 2, f_total - 1)
    rows = []
    for c in range(min(clips, batch["template"].shape[0])):
        for f in frames:
            cells = [batch["template"][c, f], batch["mask"][c, f][..., None].expand(-1, -1, 3),
                     batch["reference"][c], teacher[c, f], student[c, f], truth[c, f]]
            gap = torch.ones(cells[0].shape[0], 1, 3)
            rows.append(torch.cat([t for cell in cells for t in (cell.float(), gap)][:-1], dim=1))
        rows.append(torch.ones(1, rows[-1].shape[1], 3))
    grid = (torch.cat(rows[:-1], dim=0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def format_table(report: dict) -> str:
    """A plain-text table of teacher vs student metrics and their retention."""
    keys = list(report["teacher"].keys())
    lines = [f"{'metric':<28}{'teacher':>10}{'student':>10}{'retention':>11}"]
    for k in keys:
        lines.append(f"{k:<28}{report['teacher'][k]:>10.4f}{report['student'][k]:>10.4f}"
                     f"{report['quality_retention'][k]:>11.3f}")
    lines.append(f"{'quality_retention.min':<28}{'':>20}{report['quality_retention']['min']:>11.3f}")
    lines.append(f"{'seconds (teacher / student)':<28}{report['seconds']['teacher']:>10.2f}"
                 f"{report['seconds']['student']:>10.2f}")
    lines.append(f"{'speedup':<28}{'':>20}{report['speedup']:>11.2f}x")
    return "\n".join(lines)
