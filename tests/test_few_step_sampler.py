"""PVTT Few-Step Sampler's sampler function against PVTT's own few-step sampler (no ComfyUI needed).

The function is driven through the small interface ComfyUI's KSAMPLER hands a k-diffusion sampler (a
denoiser returning x0, ``inner_model.inner_model.model_sampling.noise_scaling``, ``process_latent_in``,
``noise``); here that interface wraps a tiny PVTT model with flow matching's noise scaling, and noise is
drawn from one generator in PVTT's order. Re-injection off must equal ``sample_student`` without
background preservation, on must equal it with; both are PVTT's production sampler, not a re-derivation.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import torch
from _comfy_pack import load_pack
from _tiny import MICRO_BACKBONE

from pvtt_train.models.pvtt_model import Condition, WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.sampling.samplers import sample_student

sample_pvtt_few_step = importlib.import_module(load_pack().__name__ + ".nodes.few_step_sampler").sample_pvtt_few_step
SIGMAS = FlowSchedule(3.0).student_sigmas([1000, 750, 500, 250])


class FlowDenoiser:
    """A PVTT model behind the interface KSAMPLER gives a sampler function (x0 prediction, CONST scaling)."""

    def __init__(self, model, cond, noise):
        self.model, self.cond, self.noise = model, cond, noise
        sampling = SimpleNamespace(noise_scaling=lambda sigma, noise, latent: FlowSchedule.noise(latent, noise, sigma))
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=sampling,
                                                                       process_latent_in=lambda t: t))

    def __call__(self, x, sigma):
        return FlowSchedule.x0_from_velocity(x, self.model.velocity(x, sigma, self.cond), sigma[0])


def setup():
    torch.manual_seed(0)
    model = WanConcatPVTT(MICRO_BACKBONE).eval()
    g = torch.Generator().manual_seed(3)
    background = torch.rand(1, 3, 3, 8, 8, generator=g) * 2 - 1
    region = torch.zeros(1, 1, 3, 8, 8)
    region[..., 2:6, 1:5] = 1
    features = torch.randn(1, 7, 3, 8, 8, generator=g)
    return model, Condition(background=background, region=region, features=features, reference_slice=slice(4, 7))


def native(model, cond, reinjection: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(cond.background.shape, generator=g)
    denoiser = FlowDenoiser(model, cond, noise)
    parts = {"background": cond.background, "region": cond.region, "reference": None, "reference_frames": 0}
    return sample_pvtt_few_step(denoiser, noise, torch.tensor([*SIGMAS, 0.0]),
                                noise_sampler=lambda *_: torch.randn(cond.background.shape, generator=g),
                                reinjection=parts, background=reinjection, reference_slot=False)


def test_without_reinjection_it_is_pvtts_few_step_sampler():
    model, cond = setup()
    expected = sample_student(model, cond, FlowSchedule(3.0), SIGMAS, torch.Generator().manual_seed(7),
                              preserve_background=False)
    torch.testing.assert_close(native(model, cond, False), expected, atol=1e-6, rtol=0)


def test_with_reinjection_it_is_pvtts_sampler_with_background_preservation():
    model, cond = setup()
    expected = sample_student(model, cond, FlowSchedule(3.0), SIGMAS, torch.Generator().manual_seed(7),
                              preserve_background=True)
    got = native(model, cond, True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    plain = sample_student(model, cond, FlowSchedule(3.0), SIGMAS, torch.Generator().manual_seed(7),
                           preserve_background=False)
    assert (got - plain).abs().max() > 1e-3  # re-injection changes the result, so the check above has teeth
