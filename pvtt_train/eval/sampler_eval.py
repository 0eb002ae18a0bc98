"""Does distillation earn its place? The teacher's undistilled samplers beside its students, on the gate clips.

A student is only worth its training if it beats what the teacher gives for free at the same step
count. This scores, on the progressive run's gate clips (same clips, noise and video encoder as the
gates, so the figures match theirs):

- the teacher's own sampler (Euler with its CFG, at its own step count: the reference);
- the teacher undistilled at fewer steps, with both samplers it could be run with: its Euler + CFG
  sampler with the step count lowered, and the students' few-step sampler (predict x0, re-noise) at
  the students' uniform timesteps; on request (``ancestral``) also Euler ancestral at every step count,
  its own included, the stochastic sampler ComfyUI users reach for when an ODE drifts;
- on request (``guide``), all of these again under autoguidance by a weaker copy of the teacher
  (``sampling.autoguidance``), listed first: the teacher's own sampler so guided is then the reference;
- each student, as its file says it samples;

and checks issue 14's synthetic bars: the teacher's own sampler has the lowest Fréchet distance of
its undistilled samples; each student at the fewest steps has a distance at most ``STUDENT_VS_UNDISTILLED``
x the best undistilled sample at its step count and at most ``STUDENT_VS_TEACHER`` x the teacher's;
quality retention (product PSNR / SSIM, raw background PSNR) at least ``MIN_RETENTION``; and a
speed-up (teacher seconds over student seconds, timed in this one process) of at least ``MIN_SPEEDUP``.

Sampling noise alone moves a Fréchet distance on 64 clips by up to about 0.2 (README, the grain teachers),
as much as the gaps between a good teacher's samplers. With ``repeats`` > 1 every sample is scored under
that many draws of sampling noise (``GateEvaluator.repeated``); its scores are their means, the bars are
checked on the means, and the first bar also names the best undistilled sample under each draw, so a
verdict that the noise decides shows as one.

When the teacher's data leaves something open that a sampler has to draw (a specular highlight), a
perfect sampler and a perfect regressor are scored beside them (``sampler_oracle``): the floor the bars
stand on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ..data.batches import training_data_config
from ..distill.gates import GateEvaluator
from ..distill.report import teacher_as_few_step
from ..models.checkpoint import LoadedModel, write_atomic
from ..models.schedule import uniform_timesteps
from ..sampling.autoguidance import GUIDE_WEIGHT, autoguided
from ..sampling.flow_shift import sampled_at_shift
from .evaluate import quality_retention
from .sampler_oracle import leaves_open, oracle_rows

STUDENT_VS_UNDISTILLED = 0.7
STUDENT_VS_TEACHER = 1.15
MIN_RETENTION = 0.95
MIN_SPEEDUP = 20.0
RETAINED = ("product_psnr", "product_ssim", "background_psnr_raw")


def teacher_euler_at(teacher: LoadedModel, steps: int, **sampler) -> LoadedModel:
    """The teacher's own Euler + CFG sampler with its step count set to ``steps`` (and any other ``sampler``
    field set, such as ``eta``); the teacher itself is left unchanged."""
    meta = dict(teacher.metadata)
    meta["sampler"] = {**meta["sampler"], "steps": steps, **sampler}
    return dataclasses.replace(teacher, metadata=meta)


def teacher_ancestral_at(teacher: LoadedModel, steps: int, eta: float = 1.0) -> LoadedModel:
    """The teacher's Euler + CFG sampler as Euler ancestral (``eta``) at ``steps`` steps."""
    return teacher_euler_at(teacher, steps, eta=eta)


def undistilled_variants(teacher: LoadedModel, step_counts, ancestral: bool = False, guide: LoadedModel | None = None,
                         guide_weight: float = GUIDE_WEIGHT) -> list[tuple[str, str, int, LoadedModel]]:
    """(name, sampler, steps, model) of every undistilled sample: the teacher's own sampler first. With a
    ``guide``, every sample is drawn under autoguidance first (the teacher's own sampler so guided becomes the
    reference, the 100-call sampler a student replaces), then again without it."""
    if guide is not None:
        mark = f", autoguided x{guide_weight:g}"
        guided = [(name + mark, sampler, steps, model) for name, sampler, steps, model in
                  undistilled_variants(autoguided(teacher, guide, guide_weight), step_counts, ancestral)]
        return guided + undistilled_variants(teacher, step_counts, ancestral)
    own = teacher.sampler["steps"]
    variants = [(f"teacher Euler {own}", "euler", own, teacher)]
    if ancestral:
        variants.append((f"teacher Euler ancestral {own}", "euler_ancestral", own, teacher_ancestral_at(teacher, own)))
    for n in sorted(set(step_counts), reverse=True):
        if n < own:
            variants.append((f"teacher Euler {n}", "euler", n, teacher_euler_at(teacher, n)))
            if ancestral:
                variants.append((f"teacher Euler ancestral {n}", "euler_ancestral", n,
                                 teacher_ancestral_at(teacher, n)))
            few_step = teacher_as_few_step(teacher, uniform_timesteps(n))
            variants.append((f"teacher few-step {n}", "few_step", n, few_step))
    return variants


def student_checks(student: dict, teacher: dict, undistilled: list[dict]) -> list[dict]:
    """A student's four bars: against the best undistilled sample at its step count, against the teacher,
    quality retention and speed-up."""
    checks = []
    fd, name = student["scores"]["frechet_distance"], student["name"]
    same_steps = [r for r in undistilled if r["steps"] == student["steps"]]
    if same_steps:
        limit = STUDENT_VS_UNDISTILLED * min(r["scores"]["frechet_distance"] for r in same_steps)
        checks.append({"name": f"{name} Fréchet <= {STUDENT_VS_UNDISTILLED:g} x the best undistilled "
                               f"{student['steps']}-step sample", "value": fd, "limit": limit, "passed": fd <= limit})
    limit = STUDENT_VS_TEACHER * teacher["scores"]["frechet_distance"]
    checks.append({"name": f"{name} Fréchet <= {STUDENT_VS_TEACHER:g} x the teacher's", "value": fd, "limit": limit,
                   "passed": fd <= limit})
    retention = student["retention"]["min"]
    checks.append({"name": f"{name} quality retention >= {MIN_RETENTION:g} on {', '.join(RETAINED)}",
                   "value": retention, "limit": MIN_RETENTION, "passed": retention >= MIN_RETENTION})
    checks.append({"name": f"{name} speed-up >= {MIN_SPEEDUP:g}x", "value": student["speedup"], "limit": MIN_SPEEDUP,
                   "passed": student["speedup"] >= MIN_SPEEDUP})
    return checks


def check_bars(rows: list[dict]) -> dict:
    """Issue 14's synthetic bars from scored rows (``kind`` teacher / undistilled / student): the teacher's, and
    ``student_checks`` for every student at the fewest steps (a sweep's candidates are each held to them; the
    report passes only when all of them do)."""
    teacher = next(r for r in rows if r["kind"] == "teacher")
    undistilled = [r for r in rows if r["kind"] in ("teacher", "undistilled")]
    students = [r for r in rows if r["kind"] == "student"]
    best = min(undistilled, key=lambda r: r["scores"]["frechet_distance"])
    checks = [{"name": "the teacher's own sampler has the lowest Fréchet distance of its undistilled samples",
               "value": teacher["scores"]["frechet_distance"], "limit": best["scores"]["frechet_distance"],
               "passed": best is teacher, "best": best["name"]}]
    if "frechet_by_seed" in teacher:
        checks[0]["best_by_seed"] = [min(undistilled, key=lambda r: r["frechet_by_seed"][i])["name"]
                                     for i in range(len(teacher["frechet_by_seed"]))]
    fewest = min((r["steps"] for r in students), default=None)
    for student in (r for r in students if r["steps"] == fewest):
        checks += student_checks(student, teacher, undistilled)
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def mean_scores(per_seed: list[dict]) -> dict:
    """Each score averaged over the draws of sampling noise it was measured under."""
    return {key: sum(s[key] for s in per_seed) / len(per_seed) for key in per_seed[0]}


def run_sampler_eval(teacher: LoadedModel, students: list[LoadedModel], clips: int = 64,
                     step_counts=(16, 8, 4), ancestral: bool = False, video_encoder: str | None = None, seed: int = 0,
                     oracle_draws: int = 8, repeats: int = 1, guide: LoadedModel | None = None,
                     guide_weight: float = GUIDE_WEIGHT, shift: float | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Score every undistilled sample (with a ``guide``, autoguided and not; with a ``shift``, under that flow
    shift instead of the teacher's own) and every student on the gate clips, under ``repeats`` draws of sampling
    noise (the first from ``seed``), and (when the data leaves something open and ``oracle_draws`` > 0) the
    oracles; returns the report."""
    data = training_data_config(teacher)
    own_shift = teacher.schedule.shift
    if shift is not None:
        teacher = sampled_at_shift(teacher, shift)
    evaluator = GateEvaluator(data, clips, video_encoder, cache_dir=None, seed=seed)
    evaluators = [evaluator] + [evaluator.repeated(r) for r in range(1, repeats)]
    step_counts = {*step_counts, *(s.sampler["steps"] for s in students)}
    variants = undistilled_variants(teacher, step_counts, ancestral, guide, guide_weight)
    plan = [(name, "teacher" if i == 0 else "undistilled", sampler, steps, model)
            for i, (name, sampler, steps, model) in enumerate(variants)]
    plan += [(s.path.stem, "student", s.sampler["kind"], s.sampler["steps"], s) for s in students]
    rows = []
    for name, kind, sampler, steps, model in plan:
        per_seed = [e.score(model, name) for e in evaluators]
        scores = mean_scores(per_seed)
        rows.append({"name": name, "kind": kind, "sampler": sampler, "steps": steps, "scores": scores})
        spread = ""
        if repeats > 1:
            rows[-1]["frechet_by_seed"] = [s["frechet_distance"] for s in per_seed]
            spread = " (" + " / ".join(f"{fd:.3f}" for fd in rows[-1]["frechet_by_seed"]) + ")"
        log(f"{name}: Fréchet {scores['frechet_distance']:.3f}{spread}, product PSNR {scores['product_psnr']:.2f}, "
            f"{scores['seconds_per_clip']:.3f} s / clip")
    reference = rows[0]["scores"]
    for row in rows:
        row["speedup"] = reference["seconds_per_clip"] / row["scores"]["seconds_per_clip"]
        row["retention"] = quality_retention({k: reference[k] for k in RETAINED},
                                             {k: row["scores"][k] for k in RETAINED})
    if oracle_draws and leaves_open(data):
        for row in oracle_rows(evaluator, data, oracle_draws):
            rows.append(row)
            log(f"{row['name']}: Fréchet {row['scores']['frechet_distance']:.3f}, product PSNR "
                f"{row['scores']['product_psnr']:.2f}")
    return {"teacher": str(teacher.path), "students": [str(s.path) for s in students], "clips": evaluator.clips,
            "seed": seed, "seeds": [e.seed for e in evaluators], "distance_encoder": evaluator.encoder_name,
            "guide": None if guide is None else {"model": str(guide.path), "weight": guide_weight},
            "shift": {"teacher": own_shift, "sampled": teacher.schedule.shift},
            "rows": rows, "bars": check_bars(rows)}


def markdown(report: dict) -> str:
    seeds = report["seeds"]
    under = f", mean of sampling seeds {', '.join(map(str, seeds))} (the range over them in brackets)" \
        if len(seeds) > 1 else ""
    lines = [f"# Teacher samplers and students on {report['clips']} gate clips{under}", "",
             "| model | sampler | steps | Fréchet | product PSNR | SSIM | bg PSNR raw | s / clip | speed-up | "
             "retention min |", "|" + "---|" * 10]
    for r in report["rows"]:
        s = r["scores"]
        timed = (f"{s['seconds_per_clip']:.3f} | {r['speedup']:.1f}x | {r['retention']['min']:.3f}"
                 if r["kind"] != "oracle" else "— | — | —")
        fd = f"{s['frechet_distance']:.3f}"
        if "frechet_by_seed" in r:
            fd += f" ({min(r['frechet_by_seed']):.3f}–{max(r['frechet_by_seed']):.3f})"
        lines.append(f"| {r['name']} | {r['sampler']} | {r['steps'] or '—'} | {fd} | "
                     f"{s['product_psnr']:.2f} | {s['product_ssim']:.3f} | {s['background_psnr_raw']:.2f} | {timed} |")
    lines += ["", "| bar | value | limit | |", "|---|---|---|---|"]
    for c in report["bars"]["checks"]:
        detail = ""
        if "best" in c:
            by_seed = f"; under each seed: {', '.join(c['best_by_seed'])}" if "best_by_seed" in c else ""
            detail = f" (best: {c['best']}{by_seed})"
        lines.append(f"| {c['name']}{detail} | {c['value']:.3f} | {c['limit']:.3f} | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")
    lines += ["", f"Distance encoder: {report['distance_encoder']}; speed-up and retention against the first row, "
                  f"timed in one process."]
    if report.get("guide"):
        g = report["guide"]
        lines += ["", f"Autoguided rows: every model call is v_guide + {g['weight']:g} (v_teacher - v_guide), the "
                      f"guide {Path(g['model']).name}; they make twice the calls of the same sampler unguided."]
    shift = report.get("shift")
    if shift and shift["sampled"] != shift["teacher"]:
        lines += ["", f"Undistilled rows sampled at flow shift {shift['sampled']:g} (the teacher's schedule: "
                      f"{shift['teacher']:g}); each student at its own."]
    oracles = [r for r in report["rows"] if r["kind"] == "oracle"]
    if oracles:
        sampler, regressor = (r["scores"]["frechet_distance"] for r in oracles)
        low, high = oracles[0]["scores"]["frechet_range"]
        verdict = "rewards" if sampler < regressor else "does not reward"
        lines += ["", f"Oracles: a perfect sampler scores {sampler:.3f} (draws {low:.3f} to {high:.3f}), a perfect "
                      f"regressor {regressor:.3f}; on this data the Fréchet distance {verdict} sampling."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> list[Path]:
    """report.json and report.md in ``out``; each appears whole or not at all."""
    written = [Path(out) / "report.json", Path(out) / "report.md"]
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    write_atomic(written[0], lambda tmp: Path(tmp).write_text(text))
    write_atomic(written[1], lambda tmp: Path(tmp).write_text(markdown(report)))
    return written
