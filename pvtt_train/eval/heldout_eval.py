"""Held-out evaluation through the public nodes: models and baselines on clips training never saw.

Every clip comes from the independent generator (``heldout_data``) and goes through the ComfyUI nodes a
designer wires up — PVTT Load Model, PVTT Template Transfer with its default widgets (the checkpoint's
own steps, background re-injection on), then PVTT Background Preserve with its defaults — so the score
is what the designer gets, not what a training loop sees. Beside the models, the same clips are scored
for the baselines (``heldout_baselines``): aligned paste, flat mean-colour fill and the unchanged
template. Metrics are in ``heldout_metrics``; ``heldout_report`` writes report.json, report.md and the grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import node_pack
from .heldout_baselines import BASELINES
from .heldout_data import HeldoutClipGenerator, HeldoutConfig
from .heldout_metrics import clip_scores, seam_flicker_ratio


@dataclass
class Method:
    """One column of the evaluation: a model run through the nodes, or a baseline."""

    name: str
    label: str
    kind: str  # "model" or "baseline"
    source: str
    window: int  # frames per model window (baselines: the first model's, so seams line up)
    run: Callable[[dict, int], torch.Tensor]
    scores: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def designer_run(model, clip: dict, seed: int) -> torch.Tensor:
    """Template Transfer then Background Preserve, every widget at its default but the seed."""
    transfer = node_pack.widget_defaults("PVTTTemplateTransfer")
    generated = node_pack.run_node("PVTTTemplateTransfer", model=model, template_video=clip["template"],
                                   mask=clip["mask"], product_image=clip["product"][None], steps=transfer["steps"],
                                   seed=seed, preserve_background=transfer["preserve_background"])[0]
    preserve = node_pack.widget_defaults("PVTTBackgroundPreserve")
    return node_pack.run_node("PVTTBackgroundPreserve", generated=generated, template_video=clip["template"],
                              mask=clip["mask"], dilate_px=preserve["dilate_px"],
                              feather_px=preserve["feather_px"])[0]


def model_methods(models: list[Path], teacher: Path | None) -> list[Method]:
    """Load each checkpoint with PVTT Load Model; the teacher first, then the models in the given order."""
    named = ([("teacher", teacher)] if teacher is not None else []) + [(Path(m).stem, Path(m)) for m in models]
    methods, seen = [], set()
    for name, path in named:
        unique, n = name, 2
        while unique in seen:
            unique, n = f"{name}_{n}", n + 1
        seen.add(unique)
        loaded = node_pack.load_model(path)
        sampler = loaded.sampler
        label = f"{'teacher' if name == 'teacher' else unique} ({sampler.get('steps')} steps)"
        methods.append(Method(unique, label, "model", str(path), int(loaded.video["frames"]),
                              lambda clip, seed, loaded=loaded: designer_run(loaded, clip, seed)))
    return methods


def baseline_methods(window: int) -> list[Method]:
    def runner(fn):
        def run(clip, _seed):
            arrays = [clip[k].numpy() for k in ("template", "mask", "product")]
            return torch.from_numpy(fn(*arrays))
        return run

    return [Method(name, label, "baseline", fn.__doc__.strip().splitlines()[0], window, runner(fn))
            for name, (label, fn) in BASELINES.items()]


def clip_tensors(clip) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(getattr(clip, k))) for k in ("template", "mask", "product",
                                                                                   "truth")}


def mean_scores(scores: list[dict]) -> dict[str, float]:
    """Per-metric mean over clips, skipping nan (a clip without seams has no seam ratio)."""
    keys = scores[0].keys() if scores else ()
    out = {}
    for key in keys:
        values = [s[key] for s in scores if not math.isnan(s[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def run_heldout_eval(models: list[Path], teacher: Path | None, clips: int, size: int, frames: int, seed: int = 0,
                     grid_clips: int = 8, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Score every method on ``clips`` held-out clips (seeds ``seed`` .. ``seed + clips - 1``).

    Returns (report, grid): the report's ``methods`` hold each method's mean metrics and seconds per
    clip; ``grid`` holds the middle frame of each shown clip: ``inputs`` (template, mask, product, truth)
    and every method's ``outputs``."""
    config = HeldoutConfig(frames=frames, height=size, width=size)
    generator = HeldoutClipGenerator(config)
    modelled = model_methods(models, teacher)
    if not modelled:
        raise ValueError("at least one model is needed")
    student_window = modelled[-1].window
    methods = modelled + baseline_methods(student_window)
    truth_seams, per_clip = [], []
    inputs: dict[str, list[torch.Tensor]] = {k: [] for k in ("template", "mask", "product", "truth")}
    outputs: dict[str, list[torch.Tensor]] = {m.name: [] for m in methods}
    for i in range(clips):
        clip_seed = seed + i
        made = generator.clip(clip_seed)
        clip = clip_tensors(made)
        row = {"seed": clip_seed, "shape": made.shape, "rotation_deg": round(made.rotation_deg, 1),
               "scale_ratio": round(made.scale_ratio, 3), "scores": {}}
        middle = frames // 2
        for method in methods:
            start = time.perf_counter()
            output = method.run(clip, clip_seed)
            method.seconds += time.perf_counter() - start
            scores = clip_scores(output.float(), clip, method.window)
            method.scores.append(scores)
            row["scores"][method.name] = scores
            if i < grid_clips:
                outputs[method.name].append(output[middle].float())
        truth_seams.append(seam_flicker_ratio(clip["truth"], clip["mask"], student_window))
        if i < grid_clips:
            for key in ("template", "truth"):
                inputs[key].append(clip[key][middle])
            inputs["mask"].append(clip["mask"][middle][..., None].expand(-1, -1, 3))
            inputs["product"].append(clip["product"])
        per_clip.append(row)
        log(f"clip {i + 1}/{clips} ({made.shape}, {made.rotation_deg:+.0f} deg, scale x{made.scale_ratio:.2f}): "
            + ", ".join(f"{m.name} {row['scores'][m.name]['product_psnr']:.2f}" for m in methods) + " dB")
    defaults = {node: node_pack.widget_defaults(node) for node in ("PVTTTemplateTransfer", "PVTTBackgroundPreserve")}
    report = {
        "clips": clips,
        "seed": seed,
        "video": {"frames": frames, "height": size, "width": size},
        "generator": {"module": "pvtt_train.eval.heldout_data", **config.to_dict()},
        "nodes": {node: {k: v for k, v in values.items() if k in ("steps", "preserve_background", "dilate_px",
                                                                   "feather_px")}
                  for node, values in defaults.items()},
        "methods": {m.name: {"label": m.label, "kind": m.kind, "source": m.source, "window_frames": m.window,
                             "seconds_per_clip": round(m.seconds / clips, 3), **mean_scores(m.scores)}
                    for m in methods},
        "truth_seam_flicker_ratio": mean_scores([{"r": r} for r in truth_seams])["r"],
        "threads": torch.get_num_threads(),
        "per_clip": per_clip,
    }
    return report, {"inputs": inputs, "outputs": outputs}
