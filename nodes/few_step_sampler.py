"""DMD's few-step sampler as a ComfyUI k-diffusion sampler function (for KSAMPLER / SamplerCustomAdvanced).

At each sigma the model predicts x0; x0 is re-noised with fresh noise to the next sigma; the last
prediction is the output. That is ComfyUI's ``lcm`` sampler step for step (same model calls, same
``noise_scaling``, same noise draws), so with nothing switched on it returns what ``lcm`` returns.
PVTT adds two things, both from ``reinjection`` (made by PVTT VACE Conditioning):

- background re-injection: before every model call, outside the mask the latent is replaced by the
  template's latent noised to the current sigma with the noise of that step, as PVTT's own sampler
  (``pvtt_train.sampling.samplers.student_rollout``) does;
- the reference slot: the latent frame(s) in front of the clip that hold the product photo are set
  to the reference latent noised to the current sigma with PVTT's fixed noise
  (``WanVACEPVTT._reference_slot``), the input PVTT's students were trained on. Core ComfyUI instead
  denoises that frame freely from the initial noise.

ComfyUI objects are reached through the model wrapper passed in (as ``sample_lcm`` does), so this
module imports ComfyUI only for its default noise sampler.
"""

from __future__ import annotations

import torch


def reference_noise(shape, like: torch.Tensor) -> torch.Tensor:
    """PVTT's fixed reference-slot noise (``wan_vace.REFERENCE_NOISE_SEED``), one draw shared by the batch."""
    from ..pvtt_train.models.wan_vace import REFERENCE_NOISE_SEED

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(REFERENCE_NOISE_SEED))
    return noise.to(like)


@torch.no_grad()
def sample_pvtt_few_step(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                         reinjection=None, background=True, reference_slot=True):
    """``sample_lcm`` plus PVTT's background re-injection and reference slot (see the module docstring)."""
    extra_args = {} if extra_args is None else extra_args
    base = model.inner_model.inner_model
    if noise_sampler is None:
        from comfy.k_diffusion.sampling import default_noise_sampler

        noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    scaling = base.model_sampling.noise_scaling
    parts = _prepared(reinjection, base, x) if reinjection is not None else None
    noise = model.noise if hasattr(model, "noise") else x  # the draw x was made from (KSAMPLER's model.noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        if parts is not None:
            x = _inject(x, sigmas[i], noise, parts, scaling, background, reference_slot)
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            x = scaling(sigmas[i + 1], noise, x)
    return x


def _prepared(reinjection: dict, base, x: torch.Tensor) -> dict:
    """Re-injection latents in the model's latent space (``process_latent_in``), on x's device and dtype."""
    frames = reinjection["reference_frames"]
    latent_in = lambda t: base.process_latent_in(t.to(x.device, torch.float32)).to(x.dtype)
    reference = latent_in(reinjection["reference"]) if frames else None
    return {"frames": frames, "background": latent_in(reinjection["background"]),
            "region": reinjection["region"].to(x.device, x.dtype), "reference": reference,
            "reference_noise": reference_noise(reference.shape[1:], x) if frames else None}


def _inject(x, sigma, noise, parts, scaling, background: bool, reference_slot: bool):
    frames = parts["frames"]
    x = x.clone()
    if background:
        clip, clip_noise = x[:, :, frames:], noise[:, :, frames:]
        noised = scaling(sigma, clip_noise, parts["background"].expand_as(clip))
        x[:, :, frames:] = parts["region"] * clip + (1 - parts["region"]) * noised
    if reference_slot and frames:
        ref = parts["reference"].expand(x.shape[0], -1, -1, -1, -1)
        x[:, :, :frames] = scaling(sigma, parts["reference_noise"].expand_as(ref), ref)
    return x
