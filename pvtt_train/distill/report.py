"""The per-stage report of a progressive run: JSON, markdown and a quality-speed plot.

Latency and quality come from one side-by-side evaluation (``eval.evaluate``): the teacher, every
stage's student and the undistilled teacher sampled at the last stage's steps, on the same
held-out clips, batch and seed, in one process. Gate results and training time come from the
run's ``progress.json`` entries.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data.dataset import EncodedDataset
from ..data.synthetic import SyntheticConfig
from ..eval.evaluate import evaluate, quality_retention
from ..models.checkpoint import LoadedModel, load_checkpoint, write_atomic
from ..sampling.flow_shift import sampled_at_shift
from .config import UNIFORM_TRUTH, RunConfig
from .teacher_sampling import teacher_sampling

PLOT_METRICS = ("product_psnr", "product_ssim", "background_psnr_raw", "warp_error")


def teacher_as_few_step(teacher: LoadedModel, timesteps, shift: float | None = None) -> LoadedModel:
    """The undistilled teacher sampled with the student's few-step sampler: the baseline DMD must beat. ``shift``:
    the students' flow shift (``distill --shift``; None: the teacher's own), so that the baseline runs the
    students' sampler whole, not at the teacher's schedule."""
    if shift is not None:
        teacher = sampled_at_shift(teacher, shift)
    meta = dict(teacher.metadata)
    meta["sampler"] = {"kind": "few_step", "steps": len(timesteps), "timesteps": list(timesteps)}
    return dataclasses.replace(teacher, metadata=meta)


def sampler_label(sampler: dict) -> str:
    """How the teacher row was sampled, from its checkpoint's sampler (not assumed: a teacher may run
    without CFG, or at other than 50 steps)."""
    kind = {"euler_cfg": "Euler", "few_step": "few-step"}.get(sampler["kind"], sampler["kind"])
    cfg = sampler.get("cfg", 1.0)
    return f"{kind} {sampler['steps']}" + (f", CFG {cfg:g}" if sampler["kind"] == "euler_cfg" and cfg != 1.0 else "")


def stage_recipe(student: LoadedModel) -> dict | None:
    """How a student was trained, from its own provenance (the stage's config as distill ran it): learning
    rates, critic steps per generator step, and each loss with its weight and warm-up. None for a student
    exported without it."""
    stage = (student.metadata.get("provenance", {}).get("config") or {}).get("stage")
    if not stage:
        return None
    return {"lr_student": stage["lr_student"], "lr_critic": stage["lr_critic"], "critic_ratio": stage["critic_ratio"],
            "losses": {loss: stage["weights"][loss] for loss in stage["losses"]},
            **({"truth_region": stage["truth_region"]} if "truth_region" in stage else {})}


def recipe_markdown(report: dict) -> list[str]:
    """The stages' recipes as a table, so the report says how its students were trained."""
    rows = [(s["name"], s["generator_steps"], s.get("recipe")) for s in report["stages"]]
    if not any(recipe for _, _, recipe in rows):
        return []
    lines = ["", "| stage | generator steps | student lr | critic lr | critic steps per generator step | "
                 "losses (weight, warm-up generator steps) |", "|" + "---|" * 6]
    for name, steps, r in rows:
        if r is None:
            lines.append(f"| {name} | {steps} | - | - | - | not recorded in its export |")
            continue
        losses = ", ".join(f"{loss} {w:g}" + (f" ({warmup})" if warmup else "") for loss, (w, warmup)
                           in r["losses"].items())
        if "truth" in r["losses"] and tuple(r.get("truth_region", UNIFORM_TRUTH)) != UNIFORM_TRUTH:
            losses += " (mask {:g}, interior {:g})".format(*r["truth_region"])
        lines.append(f"| {name} | {steps} | {r['lr_student']:.3g} | {r['lr_critic']:.3g} | {r['critic_ratio']} | "
                     f"{losses} |")
    return lines


def side_by_side(teacher: LoadedModel, progressive: dict, data: SyntheticConfig | EncodedDataset, clips: int = 16,
                 plain: LoadedModel | None = None):
    """Evaluate teacher and all stages together on held-out clips (synthetic, or the dataset's held-out
    split, where product metrics are NaN without ground truth); returns (report, outputs, batch) of
    ``evaluate`` with a ``stages`` list (metrics, latency, speedup, retention, gate, training minutes).
    ``plain``: the teacher's own weights and schedule when ``teacher`` is sampled otherwise
    (``teacher_sampling``); the undistilled row runs them with the students' sampler, as the gates do."""
    stages = progressive["stages"]
    loaded = {s["name"]: load_checkpoint(Path(s["export"])) for s in stages}
    final = stages[-1]["name"]
    extra = {name: m for name, m in loaded.items() if name != final}
    extra["teacher_undistilled"] = teacher_as_few_step(plain or teacher, stages[-1]["timesteps"],
                                                       loaded[final].metadata["schedule"].get("shift"))
    report, outputs, batch = evaluate(teacher, loaded[final], data, count=clips, extra=extra)
    rows = []
    for s in stages:
        key = "student" if s["name"] == final else s["name"]
        metrics = report[key]
        rows.append({
            "name": s["name"], "steps": s["steps"], "timesteps": s["timesteps"],
            "metrics": metrics, "seconds": report["seconds"][key],
            "speedup": report["seconds"]["teacher"] / report["seconds"][key],
            "model_calls_per_clip": report["model_calls_per_clip"][key],
            "quality_retention": quality_retention(report["teacher"], metrics),
            "gate": s.get("gate"), "gate_scores": s.get("scores"),
            "generator_steps": s["stats"]["generator_steps"], "train_minutes": s.get("train_minutes"),
            "export": s["export"], "recipe": stage_recipe(loaded[s["name"]]),
        })
    report["stages"] = rows
    report["teacher_sampler"] = teacher.metadata["sampler"]
    report["gate_teacher_scores"] = progressive.get("teacher")
    report["gate_undistilled_scores"] = progressive.get("undistilled")
    report["distance_encoder"] = progressive.get("distance_encoder")
    report["data"] = data.provenance() if isinstance(data, EncodedDataset) else {"kind": "synthetic",
                                                                                 **data.to_dict()}
    return report, outputs, batch


def sampled_side_by_side(teacher: LoadedModel, progressive: dict, data: SyntheticConfig | EncodedDataset,
                         clips: int, run: RunConfig, guide: Path | None):
    """``side_by_side`` against the teacher as the run sampled it (``run.teacher_shift``, autoguided by ``guide``:
    ``teacher_sampling``), its undistilled row on the plain weights; the report records that sampling. ``teacher``:
    the plain teacher."""
    sampling = teacher_sampling(teacher, run.teacher_shift, guide, run.guide_weight,
                                (progressive.get("teacher_sampling") or {}).get("guide_sha256"))
    report, outputs, batch = side_by_side(sampling.apply(teacher), progressive, data, clips, plain=teacher)
    if sampling.record():
        report["teacher_sampling"] = sampling.record()
    return report, outputs, batch


def markdown(report: dict) -> str:
    head = ("| model | steps | model calls | product PSNR | SSIM | bg PSNR raw | warp err | Fréchet (gate) | "
            "s / batch | speedup | retention min | gate | train min |")
    lines = [head, "|" + "---|" * 13]
    t, tg = report["teacher"], report.get("gate_teacher_scores") or {}
    sampler = report["teacher_sampler"]
    lines.append(f"| teacher ({sampler_label(sampler)}) | {sampler['steps']} | "
                 f"{report['model_calls_per_clip']['teacher']} | "
                 f"{t['product_psnr']:.2f} | {t['product_ssim']:.3f} | {t['background_psnr_raw']:.2f} | "
                 f"{t['warp_error']:.4f} | {tg.get('frechet_distance', float('nan')):.3f} | "
                 f"{report['seconds']['teacher']:.2f} | 1.0x | 1.000 | - | - |")
    for s in report["stages"]:
        m, g = s["metrics"], s["gate"] or {}
        fd = (s["gate_scores"] or {}).get("frechet_distance", float("nan"))
        verdict = "pass" if g.get("passed") else ("forced" if g.get("forced") else "FAIL")
        lines.append(f"| {s['name']} | {s['steps']} | {s['model_calls_per_clip']} | {m['product_psnr']:.2f} | "
                     f"{m['product_ssim']:.3f} | {m['background_psnr_raw']:.2f} | {m['warp_error']:.4f} | {fd:.3f} | "
                     f"{s['seconds']:.2f} | {s['speedup']:.1f}x | {s['quality_retention']['min']:.3f} | {verdict} | "
                     f"{s['train_minutes']} |")
    u = report.get("teacher_undistilled")
    if u:
        lines.append(f"| teacher undistilled | {report['stages'][-1]['steps']} | "
                     f"{report['model_calls_per_clip']['teacher_undistilled']} | {u['product_psnr']:.2f} | "
                     f"{u['product_ssim']:.3f} | {u['background_psnr_raw']:.2f} | {u['warp_error']:.4f} | "
                 f"{(report.get('gate_undistilled_scores') or {}).get('frechet_distance', float('nan')):.3f} | "
                     f"{report['seconds']['teacher_undistilled']:.2f} | - | - | - | - |")
    sampled = report.get("teacher_sampling")
    if sampled:
        how = ([f"at flow shift {sampled['shift']:g}"] if sampled.get("shift") is not None else []) + \
            ([f"autoguided by {sampled['guide']} at weight {sampled['guide_weight']:g} (each call is the teacher's "
              f"and the guide's)"] if sampled.get("guide") else [])
        lines += ["", "The teacher row, the gates and the regression targets sample the teacher " + ", ".join(how)
                  + "; the undistilled row is its plain weights with the students' sampler."]
    lines += recipe_markdown(report)
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Steps against each quality metric, the gate distance and latency: the students as a line,
    the teacher at its own steps as a star, the undistilled teacher at the last stage's steps as a cross."""
    from ..training_extra import require

    require("the report's quality_speed.png", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    steps = [s["steps"] for s in stages]
    sampler = report["teacher_sampler"]
    panels = [(key, [s["metrics"][key] for s in stages], report["teacher"][key],
               (report.get("teacher_undistilled") or {}).get(key)) for key in PLOT_METRICS]
    gate = report.get("gate_teacher_scores") or {}
    panels.append(("frechet_distance (gate clips)", [(s["gate_scores"] or {}).get("frechet_distance") for s in stages],
                   gate.get("frechet_distance"), (report.get("gate_undistilled_scores") or {}).get("frechet_distance")))
    panels.append(("seconds per batch", [s["seconds"] for s in stages], report["seconds"]["teacher"],
                   report["seconds"].get("teacher_undistilled")))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    for ax, (title, values, teacher, undistilled) in zip(axes, panels):
        ax.plot(steps, values, "o-", label="DMD students")
        if teacher is not None:
            ax.plot([sampler["steps"]], [teacher], "*", markersize=12, color="black",
                    label=f"teacher, {sampler_label(sampler)}")
        if undistilled is not None:
            ax.plot([steps[-1]], [undistilled], "x", markersize=9, color="red", label="teacher, undistilled")
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(steps + [sampler["steps"]])
        ax.set_xticklabels([str(s) for s in steps + [sampler["steps"]]])
        ax.set_xlabel("sampling steps")
    axes[-1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, folder: Path) -> None:
    folder = Path(folder)
    text = json.dumps(report, indent=2)
    write_atomic(folder / "report.json", lambda tmp: Path(tmp).write_text(text))
    md = markdown(report)
    write_atomic(folder / "report.md", lambda tmp: Path(tmp).write_text(md))
    plot(report, folder / "quality_speed.png")
