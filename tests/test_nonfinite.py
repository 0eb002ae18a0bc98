"""No silent NaN and no silent noise (issue 12, defect 9).

Damaged weights (NaN, Inf, integers, float64 values beyond float32) are refused at load, naming the
tensor. A model whose weights are finite but overflow when run yields NaN/Inf, and ``transfer`` must
raise an error naming the checkpoint instead of returning (or clamping) such a clip.
"""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import micro_teacher
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pvtt_train.errors import CheckpointError, InputError
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.pipeline import transfer
from pvtt_train.sampling.samplers import sample_from_metadata


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return micro_teacher(tmp_path_factory.mktemp("nonfinite") / "teacher.safetensors", steps=2)


def with_weights(teacher, tmp_path, edit, name="damaged.safetensors"):
    """The teacher's metadata over weights changed by ``edit(state)``."""
    with safe_open(str(teacher), framework="pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(teacher))
    edit(state)
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def inputs(frames=9, size=16):
    g = torch.Generator().manual_seed(0)
    template = torch.rand(frames, size, size, 3, generator=g) * 0.6 + 0.2
    mask = torch.zeros(frames, size, size)
    mask[:, 4:12, 4:12] = 1
    photo = torch.full((20, 20, 3), 0.9)
    photo[5:15, 5:15] = torch.tensor([0.8, 0.2, 0.1])
    return template, mask, photo


FIRST = "backbone.blocks.0.ffn.net.0.proj.weight"


def all_nan(state):
    for key in state:
        state[key] = torch.full_like(state[key], float("nan"))


def one_inf(state):
    state[FIRST] = state[FIRST].clone()
    state[FIRST].view(-1)[7] = float("inf")


def int32(state):
    state[FIRST] = (state[FIRST] * 100).to(torch.int32)


def float64_overflow(state):
    state[FIRST] = state[FIRST].double()
    state[FIRST].view(-1)[0] = 1e300  # finite as float64, Inf once cast to the model's float32


DAMAGE = [
    ("all-nan", all_nan, r"weight '[\w.]+' holds (\d+) NaN/Inf values of \1;"),
    ("one-inf-tensor", one_inf, rf"weight '{FIRST}' holds 1 NaN/Inf values of \d+;"),
    ("int32", int32, rf"tensor '{FIRST}' is stored as I32 \(1 of \d+ tensors are not floating point\)"),
    ("float64-beyond-float32", float64_overflow, rf"weight '{FIRST}' holds 1 NaN/Inf values"),
]


@pytest.mark.parametrize("case", DAMAGE, ids=[c[0] for c in DAMAGE])
def test_damaged_weights_are_refused_at_load_naming_the_tensor(teacher, tmp_path, case):
    _, edit, message = case
    path = with_weights(teacher, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as excinfo:
        load_checkpoint(path)
    assert str(excinfo.value).startswith("damaged.safetensors: ")
    assert "export it again" in str(excinfo.value) or "intact copy" in str(excinfo.value)


def test_float16_weights_still_load_exactly(teacher, tmp_path):
    """Float weights of another precision are fine: cast on the way in, as load_state_dict did."""
    path = with_weights(teacher, tmp_path, lambda s: s.update({k: v.half() for k, v in s.items()}))
    loaded = load_checkpoint(path)
    for name, value in load_file(str(path)).items():
        assert torch.equal(loaded.model.state_dict()[name], value.float())


def overflowing(state):
    """Finite weights whose output overflows float32: the last projection scaled to 1e38."""
    state["backbone.proj_out.weight"] = torch.full_like(state["backbone.proj_out.weight"], 1e38)


def test_a_model_that_outputs_nan_raises_naming_the_checkpoint_instead_of_returning_a_clip(teacher, tmp_path):
    loaded = load_checkpoint(with_weights(teacher, tmp_path, overflowing, name="overflow.safetensors"))
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    with pytest.raises(CheckpointError) as excinfo:
        transfer(loaded, *inputs())
    message = str(excinfo.value)
    assert message.startswith("overflow.safetensors produced NaN/Inf values (")
    bad, total = map(int, message.split("(")[1].split(" values")[0].split(" of "))
    assert 0 < bad <= total == 3 * 9 * 16 * 16  # x0 in model space: [1, 3, 9, 16, 16]
    assert "re-export it" in message.lower()


def test_inf_output_is_not_clamped_into_a_white_clip(teacher):
    """``decode`` clamps, which turns +Inf into 1.0 (white): the check must look at x0 before that.
    One Euler step of a velocity of -Inf lands exactly on x0 = +Inf everywhere."""
    loaded = load_checkpoint(teacher)
    model = loaded.model
    template, mask, photo = inputs()
    cond = model.condition(template[None], mask[None], photo[None])
    assert torch.equal(model.decode(torch.full_like(cond.background, float("inf"))), torch.ones(1, 9, 16, 16, 3))
    one_step = {**loaded.metadata, "sampler": {"kind": "euler_cfg", "steps": 1, "cfg": 1.0}}
    model.velocity = lambda x, sigma, c, keep=True: torch.full_like(x, -float("inf"))  # a model that overflows
    try:
        with pytest.raises(CheckpointError, match=r"teacher\.safetensors produced NaN/Inf values \(6912 of 6912 "):
            sample_from_metadata(model, cond, one_step, source=loaded.path)
    finally:
        del model.velocity


def test_healthy_model_passes_the_output_check(teacher):
    out = transfer(load_checkpoint(teacher), *inputs())
    assert out.shape == (9, 16, 16, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("steps", [-1, -50])
def test_a_steps_override_below_one_is_refused(teacher, steps):
    loaded = load_checkpoint(teacher)
    with pytest.raises(InputError, match=rf"steps must be at least 1 \(got {steps}\)"):
        transfer(loaded, *inputs(), steps=steps)


def test_student_steps_override_uses_the_schedules_own_timestep_count(teacher, tmp_path):
    """A few-step override spaces its timesteps over num_train_timesteps, not over a fixed 1000."""
    with safe_open(str(teacher), framework="pt") as fh:
        meta = json.loads(fh.metadata()["pvtt"])
    meta["schedule"]["num_train_timesteps"] = 500
    meta["sampler"] = {"kind": "few_step", "steps": 2, "timesteps": [500, 250]}
    path = tmp_path / "student500.safetensors"
    save_file(load_file(str(teacher)), str(path), metadata={"pvtt": json.dumps(meta)})
    loaded = load_checkpoint(path)
    sigmas = []
    from pvtt_train.sampling import samplers

    real = samplers.sample_student
    samplers.sample_student = lambda model, cond, schedule, s, *a, **k: sigmas.append(s) or real(model, cond, schedule,
                                                                                                 s, *a, **k)
    try:
        transfer(loaded, *inputs(), steps=4)
    finally:
        samplers.sample_student = real
    assert sigmas == [[1.0, 0.75, 0.5, 0.25]]
