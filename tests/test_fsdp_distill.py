"""The distillation trainer's memory layout: under FSDP (two processes on gloo) the frozen teacher and the EMA
are sharded like the student and critic, and a resume is exact; the frozen VAE is one object shared by
teacher, student and critic; under mixed precision the frozen teacher is kept in the half dtype."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from _wan_fixtures import make_wan_vace_folder

from pvtt_train.distill.sharding import frozen_teacher
from pvtt_train.distill.trainer import trainable_copy
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]


def _teacher_bytes(transformer, half_bytes: int) -> int:
    """Bytes of a Wan transformer in half precision, with what diffusers keeps in fp32 (norms, time
    embedder, modulation tables) at 4 bytes: counted here from the parameter names."""
    keep = set(transformer._keep_in_fp32_modules)
    return sum(p.numel() * (4 if keep & set(name.split(".")) else half_bytes)
               for name, p in transformer.named_parameters())


def test_fsdp_shards_teacher_student_critic_and_ema_and_resumes_exactly(tmp_path):
    folder = make_wan_vace_folder(tmp_path / "wan")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(ROOT / "tests" / "_fsdp_worker.py"), str(folder), str(out)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]

    teacher = load_model(folder)
    transformer = teacher.model.transformer
    fp32 = sum(p.numel() for p in transformer.parameters()) * 4
    whole = {"teacher": _teacher_bytes(transformer, 2), "student": fp32 + teacher.model.context.nbytes,
             "critic": fp32 + teacher.model.context.nbytes, "ema": fp32}
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name, size in whole.items():
        held = [r["straight"]["stats"]["resident_bytes"][name] for r in ranks]
        # FSDP2 pads each parameter's shards to equal size, so the two halves add up to a little over the whole.
        assert all(0.4 * size < h < 0.6 * size for h in held), (name, held, size)
        assert size <= sum(held) <= 1.05 * size + teacher.model.context.nbytes, (name, held)
    for r in ranks:
        for result in (r["straight"], r["resumed"]):
            assert result["stats"]["sharded"] and result["stats"]["processes"] == 2
            assert result["vae_shared"] and not result["student_sharded"]

    rows = [json.loads(line) for line in (out / "straight.log.jsonl").read_text().splitlines()]
    assert [row["g_step"] for row in rows] == [1, 2]
    assert all(math.isfinite(row[k]) for row in rows for k in ("loss_dmd", "loss_background", "loss_critic"))
    straight = load_checkpoint(out / "straight.safetensors").model.state_dict()
    resumed = load_checkpoint(out / "resumed.safetensors").model.state_dict()
    before = teacher.model.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in before), "the resume from a saved state differs"
    assert all(torch.equal(straight[k], before[k]) for k in before if k.startswith("vae."))
    assert any(not torch.equal(straight[k], before[k]) for k in before if k.startswith("transformer."))


def test_student_and_critic_copies_share_the_teachers_vae(tmp_path):
    teacher = load_model(make_wan_vace_folder(tmp_path / "wan")).model
    student, params = trainable_copy(teacher, "cpu")
    critic, _ = trainable_copy(teacher, "cpu")
    assert student.vae is teacher.vae and critic.vae is teacher.vae
    assert not teacher.vae.training and not any(p.requires_grad for p in teacher.vae.parameters())
    shared = {id(p) for p in teacher.transformer.parameters()}
    assert params and not any(id(p) in shared for p in params), "the trained transformer must be a copy"


def test_mixed_precision_keeps_a_half_precision_teacher_copy(tmp_path):
    model = load_model(make_wan_vace_folder(tmp_path / "wan")).model
    original = {k: v.clone() for k, v in model.state_dict().items()}
    half = frozen_teacher(model, "cpu", torch.bfloat16, None)
    assert half is not model and half.vae is model.vae
    keep = set(model.transformer._keep_in_fp32_modules)
    for name, p in half.transformer.named_parameters():
        assert p.dtype == (torch.float32 if keep & set(name.split(".")) else torch.bfloat16), name
        assert not p.requires_grad
    assert sum(p.nbytes for p in half.transformer.parameters()) == _teacher_bytes(model.transformer, 2)
    state = model.state_dict()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], v) for k, v in original.items())
    # Full precision without sharding: the teacher itself, as before (the fp32 path is unchanged).
    assert frozen_teacher(model, "cpu", None, None) is model


def test_a_kept_critic_is_restored_from_a_state_without_the_vae(tmp_path):
    """Training states leave the frozen VAE out (it is the teacher's); a finished stage's critic
    (critic_init 'keep') is rebuilt from one with the teacher's VAE."""
    from pvtt_train.distill.progressive import _final_critic
    from pvtt_train.distill.sharding import model_state
    from pvtt_train.distill.state import load_state, save_state

    teacher = load_model(make_wan_vace_folder(tmp_path / "wan")).model
    critic, params = trainable_copy(teacher, "cpu")
    with torch.no_grad():
        params[0].add_(1.0)
    path = save_state(tmp_path / "state", 1, {"critic": model_state(critic, None)})
    assert not any(k.startswith("vae.") for k in load_state(path)["critic"])
    restored = _final_critic(tmp_path / "state", teacher)
    assert restored.vae is teacher.vae
    assert all(torch.equal(v, critic.state_dict()[k]) for k, v in restored.state_dict().items())
