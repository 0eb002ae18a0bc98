"""Check a teacher against ground truth on held-out clips: the bar a teacher must clear.

Runs the teacher's own sampler (50-step Euler with CFG) on held-out synthetic clips at one or more
CFG weights and reports product-region PSNR/SSIM and background PSNR *before* compositing, plus a
PNG strip (template | mask | reference | teacher | ground truth) to look at.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data.batches import heldout_batch
from ..data.synthetic import SyntheticConfig
from ..models.checkpoint import LoadedModel
from .evaluate import generate, save_grid
from .metrics import background_psnr, product_psnr, product_ssim


def with_cfg(teacher: LoadedModel, cfg: float) -> LoadedModel:
    meta = dict(teacher.metadata)
    meta["sampler"] = {**meta["sampler"], "cfg": cfg}
    return dataclasses.replace(teacher, metadata=meta)


#: Held-out clips used to choose the CFG weight; disjoint from the ones evaluation reports on.
CALIBRATION_OFFSET = 5000


def teacher_bar(teacher: LoadedModel, data: SyntheticConfig, cfgs=(1.0, 1.5, 2.0), count: int = 16,
                seed: int = 0, strip_path=None, offset: int = 0) -> dict:
    batch = heldout_batch(data, count, offset)
    results = {}
    for cfg in cfgs:
        g = generate(with_cfg(teacher, cfg), batch, seed)
        results[f"cfg_{cfg:g}"] = {
            "product_psnr": product_psnr(g.raw, batch["target"], batch["mask"]),
            "product_ssim": product_ssim(g.raw, batch["target"], batch["mask"]),
            "background_psnr_raw": background_psnr(g.raw, batch["target"], batch["mask"]),
            "seconds": round(g.seconds, 2),
        }
        if strip_path is not None and cfg == cfgs[-1]:
            save_grid(strip_path, batch, g.raw, g.raw)
    paste_only = torch.where(batch["mask"][..., None] > 0.5, batch["paste"], batch["template"])
    results["baseline_paste_composite"] = {"product_psnr": product_psnr(paste_only, batch["target"], batch["mask"])}
    return results


def calibrate_cfg(teacher: LoadedModel, data: SyntheticConfig, cfgs=(1.25, 1.5, 2.0), count: int = 16) -> float:
    """The guided CFG weight (> 1) with the best product PSNR on calibration clips, which are
    disjoint from the evaluation clips so the reported numbers are not tuned on."""
    if any(c <= 1 for c in cfgs):
        raise ValueError(f"calibrate among guided weights (> 1), got {cfgs}")
    results = teacher_bar(teacher, data, cfgs, count, offset=CALIBRATION_OFFSET)
    return max(cfgs, key=lambda c: results[f"cfg_{c:g}"]["product_psnr"])
