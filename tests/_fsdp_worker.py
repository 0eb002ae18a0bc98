"""One rank of the FSDP distillation test (tests/test_fsdp_distill.py), launched by ``torch.distributed.run``
on gloo with ``ACCELERATE_USE_FSDP=true``.

It trains one stage of a tiny Wan-VACE teacher to the end (saving a training state every generator step),
then sets the newest state aside and resumes from the one before, so the last step is trained again from a
restored state. Each rank writes what it held and what came out to ``rank<N>.json``; the main process also
exports both students.
"""

import json
import os
import sys
from pathlib import Path

import torch

from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill.config import RunConfig, StageConfig
from pvtt_train.distill.progressive import make_accelerator
from pvtt_train.distill.trainer import StageInputs, train_stage
from pvtt_train.models.checkpoint import save_checkpoint
from pvtt_train.models.loading import load_model


def main(folder: Path, out: Path) -> None:
    torch.set_num_threads(1)
    teacher = load_model(folder)
    run = RunConfig(batch_size=1, log_every=1, save_every=1, mixed_precision="bf16", ema_decay=0.9)
    stage = StageConfig(name="s", timesteps=(1000, 500), generator_steps=2, critic_ratio=1, lr_student=1e-3,
                        lr_critic=1e-3, losses=("dmd", "background"))
    acc = make_accelerator(run, out, trackers=False)
    inputs = StageInputs(teacher=teacher, real=teacher.model, real_cfg=2.0, student_init=teacher.model,
                         critic_init=teacher.model, data=SyntheticConfig(frames=9, height=32, width=32))
    state_dir = out / "state"
    metadata = {**{k: teacher.metadata[k] for k in ("schedule", "sampler", "video", "conditioning")}, "stage": "s"}
    report = {"rank": acc.process_index}
    for name, resume in (("straight", False), ("resumed", True)):
        if resume and acc.is_main_process:
            newest = max(state_dir.glob("state-*.safetensors"))
            newest.rename(out / newest.name)  # set aside: the resume starts one step earlier
        acc.wait_for_everyone()
        result = train_stage(acc, inputs, stage, run, state_dir, resume, out / f"{name}.log.jsonl", progress=False)
        vae = teacher.model.vae
        report[name] = {"stats": result.stats, "vae_shared": result.student.vae is vae and result.critic.vae is vae,
                        "student_sharded": any(hasattr(p, "device_mesh") for p in result.student.parameters())}
        if acc.is_main_process:
            save_checkpoint(out / f"{name}.safetensors", result.student, metadata)
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(report))
    acc.wait_for_everyone()


if __name__ == "__main__":
    assert os.environ.get("ACCELERATE_USE_FSDP") == "true"
    main(Path(sys.argv[1]), Path(sys.argv[2]))
