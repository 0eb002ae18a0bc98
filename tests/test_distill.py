"""DMD losses, backward-simulation rollout and the distillation loop on a micro model."""

import json

import pytest
import torch

from pvtt_train.data.batches import heldout_batch
from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill.dmd import background_loss, cfg_from_dmd2_form, critic_loss, dmd_loss
from pvtt_train.distill.trainer import DistillationAborted, DistillConfig, StageConfig, distill
from pvtt_train.models.checkpoint import load_checkpoint, read_metadata
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.sampling.samplers import student_rollout

from _tiny import load_micro_teacher


@pytest.fixture()
def teacher(tmp_path):
    return load_micro_teacher(tmp_path)


@pytest.fixture()
def cond(teacher):
    b = heldout_batch(SyntheticConfig(), 2)
    return teacher.model.condition(b["template"], b["mask"], b["reference"])


class NaNForSample:
    """Wraps a model so its velocity is NaN for one batch index (a corrupt sample)."""

    def __init__(self, model, index):
        self.model, self.index = model, index

    def velocity(self, x, sigma, cond, keep_reference=True):
        v = self.model.velocity(x, sigma, cond, keep_reference).clone()
        v[self.index] = float("nan")
        return v


def test_dmd2_form_cfg_converts_to_standard_form():
    assert cfg_from_dmd2_form(3.5) == 4.5


def test_dmd_gradient_vanishes_when_critic_equals_teacher(teacher, cond):
    x0 = torch.randn_like(cond.background, requires_grad=True)
    out = dmd_loss(x0, cond, teacher.model, teacher.model, FlowSchedule(), cfg=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    assert out.grad_norm == pytest.approx(0.0, abs=1e-8)


def test_dmd_gradient_points_from_fake_to_real(teacher, cond):
    x0 = torch.randn_like(cond.background, requires_grad=True)
    shifted = _OffsetCritic(teacher.model, 0.1)
    out = dmd_loss(x0, cond, teacher.model, shifted, FlowSchedule(), cfg=1.0,
                   generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    # The critic's x0 is x0_real - sigma*0.1 everywhere, so the DMD gradient on x0 is negative:
    # descending it raises x0 towards the teacher's side.
    assert out.loss.item() > 0
    assert (x0.grad < 0).float().mean() > 0.99


class _OffsetCritic:
    def __init__(self, model, offset):
        self.model, self.offset = model, offset

    def velocity(self, x, sigma, cond, keep_reference=True):
        return self.model.velocity(x, sigma, cond, keep_reference) + self.offset


def test_nonfinite_sample_is_zeroed_alone(teacher, cond):
    x0 = torch.randn_like(cond.background, requires_grad=True)
    out = dmd_loss(x0, cond, teacher.model, NaNForSample(teacher.model, 1), FlowSchedule(), cfg=1.5,
                   generator=torch.Generator().manual_seed(0))
    assert out.nonfinite_samples == 1
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert x0.grad[1].abs().max() == 0
    assert x0.grad[0].abs().max() > 0


def test_critic_loss_trains_on_detached_student_samples(teacher, cond):
    x0 = torch.randn_like(cond.background, requires_grad=True)
    loss = critic_loss(teacher.model.requires_grad_(True), x0, cond, FlowSchedule(),
                       torch.Generator().manual_seed(0))
    loss.backward()
    assert x0.grad is None
    assert any(p.grad is not None for p in teacher.model.parameters())


def test_background_loss_ignores_the_product_region(cond):
    x0 = cond.background.clone()
    assert background_loss(x0, cond).item() == 0
    inside = x0 + 5 * cond.region
    assert background_loss(inside, cond).item() == 0
    outside = x0 + 0.5 * (1 - cond.region)
    assert background_loss(outside, cond).item() == pytest.approx(0.25, rel=1e-5)


def test_rollout_keeps_the_graph_of_the_exit_step_only(teacher, cond):
    model = teacher.model.requires_grad_(True)
    sigmas = FlowSchedule().student_sigmas([1000, 750, 500, 250])
    x0 = student_rollout(model, cond, FlowSchedule(), sigmas, 2, torch.Generator().manual_seed(0),
                         grad_at_exit=True)
    assert x0.requires_grad
    no_grad = student_rollout(model, cond, FlowSchedule(), sigmas, 2, torch.Generator().manual_seed(0))
    assert not no_grad.requires_grad
    assert torch.equal(x0.detach(), no_grad)


def test_distill_writes_a_self_describing_student(tmp_path, teacher):
    out = tmp_path / "student.safetensors"
    cfg = DistillConfig(batch_size=2, log_every=1, stage=StageConfig(generator_steps=2, critic_ratio=2))
    distill(teacher, cfg, out, progress=False)
    meta = read_metadata(out)
    assert meta["sampler"] == {"kind": "few_step", "steps": 4, "timesteps": [1000, 750, 500, 250]}
    assert meta["stage"] == "student_4step"
    assert meta["provenance"]["generator_steps"] == 2
    assert meta["provenance"]["iterations"] == 4  # critic_ratio 2: two critic-only iterations
    assert len(meta["provenance"]["teacher_sha256"]) == 16
    student = load_checkpoint(out)
    changed = any(not torch.equal(a, b) for a, b in zip(student.model.state_dict().values(),
                                                         teacher.model.state_dict().values()))
    assert changed
    rows = [json.loads(line) for line in (tmp_path / "student.log.jsonl").read_text().splitlines()]
    assert [r["g_step"] for r in rows] == [1, 2]
    assert all(r["loss_dmd"] >= 0 and r["loss_critic"] > 0 for r in rows)


def test_distill_aborts_after_repeated_nonfinite_losses(tmp_path, teacher):
    for p in teacher.model.parameters():
        p.data.fill_(float("nan"))
    cfg = DistillConfig(batch_size=1, max_nonfinite=2, stage=StageConfig(generator_steps=5, critic_ratio=1))
    with pytest.raises(DistillationAborted, match="NaN/Inf 2 times in a row"):
        distill(teacher, cfg, tmp_path / "s.safetensors", progress=False)
    assert not (tmp_path / "s.safetensors").exists()
