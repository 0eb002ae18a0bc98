"""The end-to-end demo: data -> shipped teacher -> DMD 4-step student -> evaluation -> models folder.

Writes into ``out``: ``data/`` (exported held-out examples, MP4 + PNG), ``report.json``,
``grid.png`` (template | mask | reference | teacher | student | ground truth) and the logs; and
into ``models_dir``: the student (and a copy of the teacher) so the ComfyUI loader lists them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from .data.batches import HELDOUT_SEED_BASE, training_data_config
from .data.export import export_examples
from .distill.trainer import DistillConfig, StageConfig, distill
from .eval.evaluate import evaluate, format_table, save_grid
from .models.checkpoint import LoadedModel, load_checkpoint
from .paths import SHIPPED_TEACHER

STUDENT_FILE = "pvtt_student_4step.safetensors"


def teacher_as_few_step(teacher: LoadedModel, timesteps) -> LoadedModel:
    """The undistilled teacher sampled with the student's few-step sampler: the baseline DMD must beat."""
    meta = dict(teacher.metadata)
    meta["sampler"] = {"kind": "few_step", "steps": len(timesteps), "timesteps": list(timesteps)}
    return dataclasses.replace(teacher, metadata=meta)


def run_demo(out: Path, models_dir: Path, teacher_path: Path = SHIPPED_TEACHER, stage: StageConfig | None = None,
             clips: int = 16, export_count: int = 4, progress: bool = True) -> dict:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_checkpoint(teacher_path)
    data = training_data_config(teacher)

    print(f"[1/4] exporting {export_count} held-out examples to {out / 'data'}")
    export_examples(out / "data", data, range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + export_count))

    cfg = DistillConfig(stage=stage or StageConfig())
    print(f"[2/4] distilling {teacher.path.name} into a {len(cfg.stage.timesteps)}-step student "
          f"({cfg.stage.generator_steps} generator steps, critic ratio {cfg.stage.critic_ratio})")
    student_path = distill(teacher, cfg, models_dir / STUDENT_FILE, log_path=out / "distill.log.jsonl",
                           progress=progress, state_dir=out / "state")
    teacher_copy = models_dir / teacher.path.name
    if teacher_copy.resolve() != teacher.path.resolve():
        shutil.copyfile(teacher.path, teacher_copy)

    print(f"[3/4] evaluating teacher (50 steps, CFG) against student on {clips} held-out clips")
    student = load_checkpoint(student_path)
    baseline = teacher_as_few_step(teacher, cfg.stage.timesteps)
    report, outputs, batch = evaluate(teacher, student, data, count=clips,
                                      extra={"teacher_4step_undistilled": baseline})
    report["student_checkpoint"] = str(student_path)
    report["teacher_checkpoint"] = str(teacher.path)
    report["demo_seconds"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    save_grid(out / "grid.png", batch, outputs["teacher"].composited, outputs["student"].composited)

    print("[4/4] results")
    print(format_table(report))
    print(f"undistilled teacher at 4 steps: product PSNR "
          f"{report['teacher_4step_undistilled']['product_psnr']:.2f} dB (the student's is "
          f"{report['student']['product_psnr']:.2f} dB)")
    print(f"report: {out / 'report.json'}  grid: {out / 'grid.png'}  student: {student_path}")
    return report
