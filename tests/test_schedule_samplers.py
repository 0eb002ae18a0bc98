"""Flow schedule and samplers, checked with an oracle velocity model (exact answers, no training)."""

import pytest
import torch

from pvtt_train.models.pvtt_model import Condition
from pvtt_train.models.schedule import FlowSchedule, uniform_timesteps
from pvtt_train.sampling.samplers import (reinject_background, sample_from_metadata, sample_student,
                                          sample_teacher, sample_teacher_ancestral)

SHAPE = (1, 3, 3, 8, 8)  # [B, C, F, h, w]


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("shift,s,expected", [(1.0, 0.3, 0.3), (3.0, 0.5, 0.75), (3.0, 0.25, 0.5),
                                              (5.0, 0.1, 0.5 / 1.4), (3.0, 0.0, 0.0), (3.0, 1.0, 1.0)])
def test_warp_formula(shift, s, expected):
    assert FlowSchedule(shift=shift).warp(s) == pytest.approx(expected, abs=1e-12)


def test_warp_works_on_tensors_and_is_monotone():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    w = FlowSchedule(shift=3.0).warp(s)
    assert torch.allclose(w, 3 * s / (1 + 2 * s))
    assert (w[1:] > w[:-1]).all() and (w >= s).all()


@pytest.mark.parametrize("shift,expected", [(1.0, [1.0, 0.75, 0.5, 0.25]), (3.0, [1.0, 0.9, 0.75, 0.5])])
def test_student_sigmas(shift, expected):
    assert FlowSchedule(shift=shift).student_sigmas([1000, 750, 500, 250]) == pytest.approx(expected, abs=1e-12)


def test_uniform_timesteps():
    assert uniform_timesteps(4) == (1000, 750, 500, 250)
    assert uniform_timesteps(1) == (1000,)
    assert uniform_timesteps(3) == (1000, 667, 333)
    assert uniform_timesteps(2, num_train_timesteps=100) == (100, 50)
    with pytest.raises(ValueError):
        uniform_timesteps(0)


def test_noise_and_x0_from_velocity_invert_each_other():
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    sigma = torch.tensor([0.3])
    xt = FlowSchedule.noise(x0, n, sigma)
    assert torch.allclose(xt, 0.7 * x0 + 0.3 * n)
    assert torch.allclose(FlowSchedule.x0_from_velocity(xt, n - x0, sigma), x0, atol=1e-6)


# ---------------------------------------------------------------- oracle models

def make_cond(seed=0):
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(SHAPE, generator=g) * 2 - 1
    region = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    for f in range(SHAPE[2]):
        region[:, :, f, 2:5, 1 + f:5 + f] = 1  # a box moving right
    return Condition(background=background, region=region, features=torch.randn(1, 7, *SHAPE[2:], generator=g),
                     reference_slice=slice(4, 7))


class Oracle:
    """v = (x - Y) / sigma, the exact velocity towards Y; Y_uncond for the reference-dropped branch."""

    def __init__(self, y, y_uncond=None):
        self.y, self.y_uncond = y, (y if y_uncond is None else y_uncond)
        self.sigmas, self.inputs = [], []

    def velocity(self, x, sigma, cond, keep_reference=True):
        self.sigmas.append(sigma.clone())
        self.inputs.append(x.clone())
        b = self.y.shape[0]
        keep = torch.as_tensor(keep_reference, dtype=x.dtype).expand(x.shape[0])
        y = torch.where(keep.view(-1, 1, 1, 1, 1) > 0.5, self.y.repeat(x.shape[0] // b, 1, 1, 1, 1),
                        self.y_uncond.repeat(x.shape[0] // b, 1, 1, 1, 1))
        return (x - y) / sigma.view(-1, 1, 1, 1, 1)


def targets(cond, seed=1):
    """Two targets that agree with the background outside the mask (so re-injection is consistent)."""
    g = torch.Generator().manual_seed(seed)
    r = cond.region
    y = r * torch.randn(SHAPE, generator=g) + (1 - r) * cond.background
    y_u = r * torch.randn(SHAPE, generator=g) + (1 - r) * cond.background
    return y, y_u


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("preserve", [True, False])
def test_teacher_with_cfg_recovers_oracle_target(shift, preserve):
    cond = make_cond()
    y, y_u = targets(cond)
    cfg = 2.5
    model = Oracle(y, y_u)
    out = sample_teacher(model, cond, FlowSchedule(shift=shift), steps=6, cfg=cfg,
                         generator=torch.Generator().manual_seed(0), preserve_background=preserve)
    expected = y_u + cfg * (y - y_u)  # standard-form CFG, not swapped branches
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()
    # One batched call (cond + uncond) per step; sigmas are in [0, 1], not timesteps, and decreasing.
    assert len(model.sigmas) == 6 and all(s.shape == (2,) for s in model.sigmas)
    firsts = [float(s[0]) for s in model.sigmas]
    assert firsts[0] == pytest.approx(1.0) and all(a > b > 0 for a, b in zip(firsts, firsts[1:]))


def test_teacher_without_cfg_makes_one_call_per_step():
    cond = make_cond()
    y, _ = targets(cond)
    model = Oracle(y, y_uncond=torch.full(SHAPE, 9.0))  # would show up if the uncond branch were used
    out = sample_teacher(model, cond, FlowSchedule(), steps=4, cfg=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, y, atol=1e-4)
    assert [s.shape for s in model.sigmas] == [(1,)] * 4


@pytest.mark.parametrize("shift,timesteps,sigmas", [(1.0, [1000, 750, 500, 250], [1.0, 0.75, 0.5, 0.25]),
                                                    (3.0, [1000, 500], [1.0, 0.75])])
def test_student_recovers_oracle_target_at_the_listed_sigmas(shift, timesteps, sigmas):
    cond = make_cond()
    y, y_u = targets(cond)
    model = Oracle(y, y_u)
    schedule = FlowSchedule(shift=shift)
    out = sample_student(model, cond, schedule, schedule.student_sigmas(timesteps),
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, y, atol=1e-5)
    assert [float(s[0]) for s in model.sigmas] == pytest.approx(sigmas)


def test_student_with_cfg_recovers_guided_target():
    cond = make_cond()
    y, y_u = targets(cond)
    out = sample_student(Oracle(y, y_u), cond, FlowSchedule(), [1.0, 0.5], generator=torch.Generator().manual_seed(0),
                         cfg=3.0)
    assert torch.allclose(out, y_u + 3.0 * (y - y_u), atol=1e-4)


def test_sample_from_metadata_dispatches_both_kinds():
    cond = make_cond()
    y, _ = targets(cond)
    teacher_meta = {"schedule": {"shift": 3.0}, "sampler": {"kind": "euler_cfg", "steps": 3, "cfg": 1.0}}
    model = Oracle(y)
    assert torch.allclose(sample_from_metadata(model, cond, teacher_meta, generator=torch.Generator()), y, atol=1e-4)
    assert len(model.sigmas) == 3
    student_meta = {"schedule": {"shift": 3.0}, "sampler": {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]}}
    model = Oracle(y)
    assert torch.allclose(sample_from_metadata(model, cond, student_meta, generator=torch.Generator()), y, atol=1e-5)
    assert [float(s[0]) for s in model.sigmas] == pytest.approx([1.0, 0.75])
    model = Oracle(y)  # another step count: uniform timesteps 1000/750/500/250, shifted
    sample_from_metadata(model, cond, student_meta, steps=4, generator=torch.Generator())
    assert [float(s[0]) for s in model.sigmas] == pytest.approx([1.0, 0.9, 0.75, 0.5])
    with pytest.raises(ValueError, match="unknown sampler kind"):
        sample_from_metadata(model, cond, {"schedule": {}, "sampler": {"kind": "ddim"}})


# ---------------------------------------------------------------- Euler ancestral

class Drifting(Oracle):
    """Predicts x0 = Y + 0.3 sin(3x): wrong in a way that depends on the state, so samplers that walk different
    states end in different places, yet deterministic, so they can be compared."""

    def velocity(self, x, sigma, cond, keep_reference=True):
        return super().velocity(x, sigma, cond, keep_reference) - 0.3 * torch.sin(3 * x) / sigma.view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("preserve", [True, False])
def test_ancestral_with_cfg_recovers_oracle_target_at_the_euler_sigmas(shift, preserve):
    cond = make_cond()
    y, y_u = targets(cond)
    model, euler = Oracle(y, y_u), Oracle(y, y_u)
    out = sample_teacher_ancestral(model, cond, FlowSchedule(shift=shift), steps=6, cfg=2.5,
                                   generator=torch.Generator().manual_seed(0), preserve_background=preserve)
    assert torch.allclose(out, y_u + 2.5 * (y - y_u), atol=1e-4), (out - y_u - 2.5 * (y - y_u)).abs().max()
    sample_teacher(euler, cond, FlowSchedule(shift=shift), steps=6, cfg=2.5, generator=torch.Generator())
    assert torch.allclose(torch.stack(model.sigmas), torch.stack(euler.sigmas))  # same sigmas, one batched call each


def test_ancestral_at_eta_zero_is_the_euler_sampler():
    cond = make_cond()
    y, _ = targets(cond)
    euler = sample_teacher(Drifting(y), cond, FlowSchedule(shift=3.0), steps=5,
                           generator=torch.Generator().manual_seed(4))
    ode = sample_teacher_ancestral(Drifting(y), cond, FlowSchedule(shift=3.0), steps=5, eta=0.0,
                                   generator=torch.Generator().manual_seed(4))
    assert torch.allclose(ode, euler, atol=1e-5), (ode - euler).abs().max()
    assert (euler - y).abs().max() > 0.05  # the drift is real, so the agreement is not the oracle's


def test_ancestral_draws_fresh_noise_reproducibly():
    cond = make_cond()
    y, _ = targets(cond)
    run = lambda seed, eta=1.0: sample_teacher_ancestral(  # noqa: E731
        Drifting(y), cond, FlowSchedule(shift=3.0), steps=5, eta=eta, generator=torch.Generator().manual_seed(seed))
    inside = cond.region.expand(SHAPE) > 0.5
    assert torch.equal(run(0), run(0))
    assert (run(0) - run(1))[inside].abs().max() > 1e-2
    assert (run(0) - run(0, eta=0.0))[inside].abs().max() > 1e-2


def test_ancestral_model_sees_the_noised_template_outside_the_mask_and_returns_its_own_x0():
    cond = make_cond()
    model = Garbage()
    out = sample_teacher_ancestral(model, cond, FlowSchedule(shift=3.0), steps=6,
                                   generator=torch.Generator().manual_seed(7))
    outside = cond.region.expand(SHAPE) < 0.5
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(model.inputs[0][outside], noise[outside], atol=1e-6)  # sigma 1: the initial noise
    for x, sigma in zip(model.inputs[1:], model.sigmas[1:]):
        n = ((x - (1 - sigma) * cond.background) / sigma)[outside]  # the noise it carries: standard normal
        assert abs(float(n.mean())) < 0.25 and 0.8 < float(n.std()) < 1.2, (sigma, n.mean(), n.std())
    assert model.inputs[-1][~outside].abs().max() > 10  # inside, the garbage reached the state
    assert (out - cond.background)[outside].abs().max() > 1  # the last x0 is the model's, raw like Euler's


def test_sample_from_metadata_samples_ancestrally_when_the_sampler_has_eta():
    cond = make_cond()
    y, _ = targets(cond)
    meta = {"schedule": {"shift": 3.0}, "sampler": {"kind": "euler_cfg", "steps": 4, "cfg": 1.0}}
    ancestral = {**meta, "sampler": {**meta["sampler"], "eta": 1.0}}
    seeded = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    schedule = FlowSchedule(shift=3.0)
    assert torch.equal(sample_from_metadata(Drifting(y), cond, ancestral, generator=seeded()),
                       sample_teacher_ancestral(Drifting(y), cond, schedule, 4, 1.0, 1.0, seeded()))
    assert torch.equal(sample_from_metadata(Drifting(y), cond, meta, generator=seeded()),
                       sample_teacher(Drifting(y), cond, schedule, 4, 1.0, seeded()))


# ---------------------------------------------------------------- background re-injection

def test_reinject_background_formula():
    cond = make_cond()
    g = torch.Generator().manual_seed(3)
    x, noise = torch.randn(SHAPE, generator=g) * 100, torch.randn(SHAPE, generator=g)
    out = reinject_background(x, cond, 0.3, noise)
    inside = cond.region.expand(SHAPE) > 0.5
    assert torch.equal(out[inside], x[inside])
    expected = 0.7 * cond.background + 0.3 * noise
    assert torch.allclose(out[~inside], expected[~inside], atol=1e-6)
    assert torch.allclose(reinject_background(x, cond, 0.0, noise)[~inside], cond.background[~inside])


class Garbage:
    """Predicts large random velocities; records what it was given."""

    def __init__(self, stop_after=None):
        self.inputs, self.sigmas = [], []
        self.g = torch.Generator().manual_seed(99)

    def velocity(self, x, sigma, cond, keep_reference=True):
        self.inputs.append(x.clone())
        self.sigmas.append(float(sigma[0]))
        return torch.randn(x.shape, generator=self.g) * 50


def test_teacher_reinjects_noised_template_at_every_step():
    cond = make_cond()
    model = Garbage()
    sample_teacher(model, cond, FlowSchedule(shift=3.0), steps=5, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))  # the sampler's initial noise
    outside = cond.region.expand(SHAPE) < 0.5
    for x, sigma in zip(model.inputs, model.sigmas):
        expected = (1 - sigma) * cond.background + sigma * noise
        assert torch.allclose(x[outside], expected[outside], atol=1e-5), sigma
    # Inside the mask the garbage did reach the state (the Euler steps are not overwritten there).
    assert model.inputs[-1][~outside].abs().max() > 10


def test_student_reinjects_with_the_current_noise():
    cond = make_cond()
    model = Garbage()
    sigmas = [1.0, 0.75, 0.5]
    sample_student(model, cond, FlowSchedule(), sigmas, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noises = [torch.randn(SHAPE, generator=g) for _ in sigmas]  # initial, then one fresh draw per re-noising
    outside = cond.region.expand(SHAPE) < 0.5
    for x, sigma, noise in zip(model.inputs, sigmas, noises):
        expected = (1 - sigma) * cond.background + sigma * noise
        assert torch.allclose(x[outside], expected[outside], atol=1e-5), sigma


def test_no_reinjection_when_disabled():
    cond = make_cond()
    model = Garbage()
    sample_teacher(model, cond, FlowSchedule(), steps=3, generator=torch.Generator().manual_seed(7),
                   preserve_background=False)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    outside = cond.region.expand(SHAPE) < 0.5
    expected = (1 - model.sigmas[1]) * cond.background + model.sigmas[1] * noise
    assert not torch.allclose(model.inputs[1][outside], expected[outside], atol=1e-3)


# ---------------------------------------------------------------- callbacks

@pytest.mark.parametrize("kind", ["teacher", "ancestral", "student"])
def test_callback_once_per_step(kind):
    cond = make_cond()
    y, _ = targets(cond)
    calls = []
    cb = lambda i, n, x0: calls.append((i, n, tuple(x0.shape)))  # noqa: E731
    if kind in ("teacher", "ancestral"):
        sampler = sample_teacher if kind == "teacher" else sample_teacher_ancestral
        sampler(Oracle(y), cond, FlowSchedule(), steps=5, generator=torch.Generator(), callback=cb)
        n = 5
    else:
        sample_student(Oracle(y), cond, FlowSchedule(), [1.0, 0.75, 0.5, 0.25], generator=torch.Generator(),
                       callback=cb)
        n = 4
    assert calls == [(i, n, SHAPE) for i in range(1, n + 1)]


def test_teacher_callback_preview_is_the_x0_estimate():
    cond = make_cond()
    y, _ = targets(cond)
    previews = []
    sample_teacher(Oracle(y), cond, FlowSchedule(shift=3.0), steps=4, generator=torch.Generator(),
                   callback=lambda i, n, x0: previews.append(x0))
    for x0 in previews:  # the oracle's x0 estimate is Y at every step
        assert torch.allclose(x0, y, atol=1e-4)


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("kind", ["teacher", "ancestral", "student"])
def test_exception_from_callback_stops_sampling(kind):
    cond = make_cond()
    y, _ = targets(cond)
    model = Oracle(y)

    def cb(i, n, x0):
        if i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        if kind in ("teacher", "ancestral"):
            sampler = sample_teacher if kind == "teacher" else sample_teacher_ancestral
            sampler(model, cond, FlowSchedule(), steps=6, generator=torch.Generator(), callback=cb)
        else:
            sample_student(model, cond, FlowSchedule(), [1.0, 0.8, 0.6, 0.4, 0.2], generator=torch.Generator(),
                           callback=cb)
    assert len(model.sigmas) == 2  # no model call after the cancelling step
