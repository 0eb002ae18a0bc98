"""The end-to-end demo: data -> shipped teacher -> progressive DMD 16 -> 8 -> 4 -> report -> models folder.

The teacher is distilled as ``run`` samples it (``run.teacher_shift``, autoguided by ``guide_path``:
``distill/teacher_sampling.py``); by default (``cmd_demo``) that is the shipped paste-residual teacher at flow
shift 5 under its shipped guide, the sampler whose students meet the most of issue 14's bars.

Writes into ``out``: ``data/`` (exported held-out examples, MP4 + PNG), ``run/`` (the resumable
progressive run: states, caches, logs, per-stage strips), ``report.json`` / ``report.md`` /
``quality_speed.png`` (every stage side by side with the teacher) and ``grid.png``
(template | mask | reference | teacher | 4-step student | ground truth); ``heldout/`` (the teacher and
every student through the nodes on clips of the independent generator at a designer's 256x256, 33
frames, beside the paste, flat-fill and unchanged-template baselines: ``eval.heldout_eval``); and into ``models_dir``:
the 16-, 8- and 4-step students (and a copy of the teacher) so the ComfyUI loader lists them.

An existing ``run/`` is continued with ``resume`` or, with ``overwrite``, emptied only if PVTT created
it; otherwise the demo stops before doing anything (``run_folder``). Nothing the user put in the models
folder is overwritten.
"""

from __future__ import annotations

import time
from pathlib import Path

from .data.batches import HELDOUT_SEED_BASE, training_data_config
from .data.export import export_examples
from .distill.config import RunConfig, StageConfig
from .distill.progressive import run_progressive
from .distill.report import sampled_side_by_side, sampler_label, write_report
from .eval.evaluate import format_table, save_grid
from .eval.heldout_eval import run_heldout_eval
from .eval.heldout_report import markdown as heldout_markdown
from .eval.heldout_report import write_report as write_heldout
from .models.checkpoint import copy_atomic, file_sha256, load_checkpoint, remove_stale_temps
from .run_folder import check_run_folder


def run_demo(out: Path, models_dir: Path, stages: list[StageConfig], run: RunConfig,
             teacher_path: Path, guide_path: Path | None = None, clips: int = 16,
             export_count: int = 4, resume: bool = False, progress: bool = True, overwrite: bool = False,
             heldout_clips: int = 4) -> dict:
    started = time.monotonic()
    run_dir = out / "run"
    check_run_folder(run_dir, resume, overwrite)  # before any work; run_progressive checks again under its lock
    out.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_checkpoint(teacher_path)
    data = training_data_config(teacher)

    print(f"[1/5] exporting {export_count} held-out examples to {out / 'data'}")
    export_examples(out / "data", data, range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + export_count))

    own = teacher.sampler
    label = sampler_label(own) + "".join(
        ([f", flow shift {run.teacher_shift:g}"] if run.teacher_shift is not None else [])
        + ([f", autoguided by {guide_path.name} at weight {run.guide_weight:g}"] if guide_path is not None else []))
    path = " -> ".join([str(own["steps"])] + [str(s.steps) for s in stages])
    print(f"[2/5] progressive DMD distillation {path} of {teacher.path.name} ({label}; gated; run folder {run_dir})")
    progressive = run_progressive(teacher.path, stages, run, run_dir, models_dir, resume=resume, progress=progress,
                                  overwrite=overwrite, guide_path=guide_path)
    install_teacher(teacher.path, models_dir)

    print(f"[3/5] teacher ({label}) and every stage side by side on {clips} held-out clips")
    report, outputs, batch = sampled_side_by_side(teacher, progressive, data, clips, run, guide_path)
    report["teacher_checkpoint"] = str(teacher.path)
    report["student_checkpoint"] = progressive["stages"][-1]["export"]
    report["demo_seconds"] = round(time.monotonic() - started, 1)
    write_report(report, out)
    save_grid(out / "grid.png", batch, outputs["teacher"].composited, outputs["student"].composited)

    heldout = None
    if heldout_clips:
        students = [Path(s["export"]) for s in progressive["stages"]]
        print(f"[4/5] teacher and students through the nodes on {heldout_clips} clips of the independent held-out "
              f"generator at 256x256, 33 frames, beside the model-free baselines")
        heldout, heldout_grid = run_heldout_eval(students, teacher.path, clips=heldout_clips, size=256, frames=33,
                                                 grid_clips=min(heldout_clips, 3), log=lambda line: print("  " + line))
        report["heldout"] = {"folder": str(out / "heldout"), "methods": {
            name: {k: v for k, v in values.items() if k != "source"} for name, values in heldout["methods"].items()}}
        write_heldout(out / "heldout", heldout, heldout_grid)
        report["demo_seconds"] = round(time.monotonic() - started, 1)
        write_report(report, out)

    print("[5/5] results")
    print(format_table(report))
    print((out / "report.md").read_text())
    if heldout is not None:
        print(heldout_markdown(heldout))
    print(f"report: {out / 'report.json'} ({out / 'report.md'}, {out / 'quality_speed.png'})  grid: "
          f"{out / 'grid.png'}  students: {', '.join(s['export'] for s in report['stages'])}")
    return report


def install_teacher(teacher: Path, models_dir: Path) -> Path:
    """Put a copy of the teacher beside its students, so the ComfyUI loader lists it too; returns its path.

    The copy is atomic (``copy_atomic``): a kill mid-copy leaves no partial file, and a full disk is
    an error naming the copy. A different file of the same name already in the models folder is not
    PVTT's to replace: it is kept, and a warning says so."""
    dest = models_dir / teacher.name
    if dest.resolve() == teacher.resolve():
        return dest
    remove_stale_temps(models_dir, teacher.name)  # of a copy a kill interrupted
    if dest.exists() or dest.is_symlink():
        if not (dest.is_file() and dest.stat().st_size == teacher.stat().st_size
                and file_sha256(dest, 64) == file_sha256(teacher, 64)):
            print(f"warning: {dest} already exists and is not a copy of the teacher {teacher}; it was kept. The "
                  f"teacher the students were distilled from is {teacher} (move the other file away to have the "
                  f"demo copy it there).")
        return dest
    return copy_atomic(teacher, dest)
