"""The end-to-end demo: data -> shipped teacher -> progressive DMD 16 -> 8 -> 4 -> report -> models folder.

Writes into ``out``: ``data/`` (exported held-out examples, MP4 + PNG), ``run/`` (the resumable
progressive run: states, caches, logs, per-stage strips), ``report.json`` / ``report.md`` /
``quality_speed.png`` (every stage side by side with the teacher) and ``grid.png``
(template | mask | reference | teacher | 4-step student | ground truth); and into ``models_dir``:
the 16-, 8- and 4-step students (and a copy of the teacher) so the ComfyUI loader lists them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .data.batches import HELDOUT_SEED_BASE, training_data_config
from .data.export import export_examples
from .distill.config import RunConfig, StageConfig
from .distill.progressive import run_progressive
from .distill.report import side_by_side, write_report
from .eval.evaluate import format_table, save_grid
from .models.checkpoint import load_checkpoint
from .paths import SHIPPED_TEACHER


def run_demo(out: Path, models_dir: Path, stages: list[StageConfig], run: RunConfig,
             teacher_path: Path = SHIPPED_TEACHER, clips: int = 16, export_count: int = 4, resume: bool = False,
             progress: bool = True) -> dict:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_checkpoint(teacher_path)
    data = training_data_config(teacher)
    run_dir = out / "run"
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh demo: the demo's own run folder only

    print(f"[1/4] exporting {export_count} held-out examples to {out / 'data'}")
    export_examples(out / "data", data, range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + export_count))

    path = " -> ".join(["50"] + [str(s.steps) for s in stages])
    print(f"[2/4] progressive DMD distillation {path} of {teacher.path.name} (gated; run folder {run_dir})")
    progressive = run_progressive(teacher.path, stages, run, run_dir, models_dir, resume=resume, progress=progress)
    teacher_copy = models_dir / teacher.path.name
    if teacher_copy.resolve() != teacher.path.resolve():
        shutil.copyfile(teacher.path, teacher_copy)

    print(f"[3/4] teacher (50 steps, CFG) and every stage side by side on {clips} held-out clips")
    report, outputs, batch = side_by_side(teacher, progressive, data, clips)
    report["teacher_checkpoint"] = str(teacher.path)
    report["student_checkpoint"] = progressive["stages"][-1]["export"]
    report["demo_seconds"] = round(time.monotonic() - started, 1)
    write_report(report, out)
    save_grid(out / "grid.png", batch, outputs["teacher"].composited, outputs["student"].composited)

    print("[4/4] results")
    print(format_table(report))
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.json'} ({out / 'report.md'}, {out / 'quality_speed.png'})  grid: "
          f"{out / 'grid.png'}  students: {', '.join(s['export'] for s in report['stages'])}")
    return report
