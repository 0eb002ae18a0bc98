"""DMD losses, backward-simulation rollout and training-state files on a micro model."""

import pytest
import torch
from _tiny import load_micro_teacher

from pvtt_train.data.batches import heldout_batch
from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill.dmd import (
    background_loss,
    cfg_from_dmd2_form,
    critic_loss,
    dmd_loss,
)
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.sampling.samplers import student_rollout


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


def test_a_corrupt_state_file_is_a_clear_error(tmp_path):
    from pvtt_train.distill.state import load_state
    from pvtt_train.errors import CheckpointError

    bad = tmp_path / "state-00000001.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="delete it to resume from the one before"):
        load_state(bad)


def test_resume_skips_a_damaged_newest_state_and_keeps_it_aside(tmp_path, caplog):
    from pvtt_train.distill.state import load_newest_state, save_state

    save_state(tmp_path, 2, {"step": torch.tensor(2)}, keep=2)
    newest = save_state(tmp_path, 4, {"step": torch.tensor(4)}, keep=2)
    newest.write_bytes(newest.read_bytes()[:100])  # damaged after it was written
    with caplog.at_level("WARNING"):
        path, state = load_newest_state(tmp_path)
    assert path.name == "state-00000002.safetensors" and int(state["step"]) == 2
    assert (tmp_path / "state-00000004.safetensors.corrupt").is_file()  # kept, not deleted
    assert "resuming from the state before it" in caplog.text
    assert load_newest_state(tmp_path / "empty") is None


def test_state_round_trips_nested_optimizer_state(tmp_path):
    from pvtt_train.distill.state import load_state, save_state

    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.0, 0.999))
    p.grad = torch.ones(3)
    opt.step()
    save_state(tmp_path, 7, {"opt": opt.state_dict(), "n": 3, "none": None})
    back = load_state(tmp_path / "state-00000007.safetensors")
    assert back["n"] == 3 and back["none"] is None
    assert back["opt"]["param_groups"][0]["betas"] == (0.0, 0.999)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
