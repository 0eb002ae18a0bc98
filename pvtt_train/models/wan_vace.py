"""The production PVTT model: Wan 2.1 VACE (diffusers ``WanVACETransformer3DModel`` + ``AutoencoderKLWan``).

It implements the same interface as ``WanConcatPVTT``, with the conditioning laid out the way
``WanVACEPipeline`` lays it out, so a stock Wan-VACE checkpoint works as a teacher out of the box:

- model space is the VAE latent normalised with the VAE's ``latents_mean`` / ``latents_std``;
- the VACE control is ``[inactive, reactive, packed mask]``: the latents of ``template * (1 - mask)``
  and of ``template * mask`` (pixels in -1..1), and the pixel mask packed ``s x s`` into channels
  (``s`` = the VAE's spatial factor) and resampled to the latent frame count;
- the product photo is VACE's reference image: letterboxed on white to the clip size, encoded as a
  one-frame latent and prepended to the control as ``[reference latent, zeros, zero mask]``; the
  latent sequence gets a matching leading frame, which is stripped from the prediction.

The reference frame lives inside ``velocity`` rather than in model space, so ``encode`` and
``decode`` stay inverse to each other and ``x0 = encode(target)`` has the shape of
``Condition.background``, as the trainers, samplers and DMD losses expect.

The text prompt is the Condition's per-clip ``context`` (UMT5 embeddings from ``text_encoder``);
a Condition without one uses the model's fixed ``context`` (zeros, or a folder's
prompt_embeds.safetensors). CFG has two unconditional branches (``samplers.guided_velocity``):
the negative prompt with the reference and control kept, exactly as ``WanVACEPipeline``, or, for a
model without a text encoder, the same prompt without the reference frame at all
(``keep_reference`` below), which is ``WanVACEPipeline`` without ``reference_images``.

``WanVACEPipeline``'s own helpers (``prepare_video_latents``, ``prepare_masks``) cannot be called
here: they refuse batches larger than one. The few lines of packing are therefore mirrored below,
batched; ``tests/test_wan_vace.py`` checks them against the pipeline.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanVACETransformer3DModel
from torch import nn

from .pvtt_model import Condition, model_to_video, video_to_model

#: Leading frames of ``Condition.features`` that hold the product reference.
REFERENCE_FRAMES = 1
#: Seed of the fixed noise that fills the reference frame of the latent sequence (see ``_reference_slot``).
REFERENCE_NOISE_SEED = 0


def plain_config(module) -> dict:
    """A diffusers model's config as JSON-safe data, without diffusers' private ``_`` keys."""
    return json.loads(json.dumps({k: v for k, v in module.config.items() if not k.startswith("_")}))


def spatial_factor(vae: AutoencoderKLWan) -> int:
    """Pixels per latent cell, computed the way WanVACEPipeline does (its ``scale_factor_spatial``
    config value is not derived from the architecture and may be wrong)."""
    return 2 ** len(vae.config.temperal_downsample)


def temporal_factor(vae: AutoencoderKLWan) -> int:
    return 2 ** sum(vae.config.temperal_downsample)


def latent_frames(frames: int, temporal: int) -> int:
    """Latent frames of a ``1 + temporal * k`` frame clip (Wan's causal VAE keeps frame 0 alone)."""
    return (frames - 1) // temporal + 1


def pack_mask(mask: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """Pixel mask [B,1,F,H,W] to VACE's control mask [B, s*s, f, h, w], as ``prepare_masks`` does:
    each s x s pixel block becomes s*s channels, then frames are resampled nearest-exact."""
    b, _, frames, height, width = mask.shape
    h, w = height // spatial, width // spatial
    packed = mask.reshape(b, frames, h, spatial, w, spatial).permute(0, 3, 5, 1, 2, 4)
    packed = packed.reshape(b, spatial * spatial, frames, h, w)
    return F.interpolate(packed, size=(latent_frames(frames, temporal), h, w), mode="nearest-exact")


def latent_region(mask: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """Pixel mask [B,1,F,H,W] to the regenerate region [B,1,f,h,w] at latent resolution.

    A latent cell is regenerated if any pixel it encodes is masked (over its s x s block and all
    frames of its causal group: frame 0 alone, then ``temporal`` frames each), so background
    re-injection can never overwrite part of the product.
    """
    if temporal > 1:
        mask = torch.cat([mask[:, :, :1].expand(-1, -1, temporal - 1, -1, -1), mask], dim=2)
    return F.max_pool3d(mask, kernel_size=(temporal, spatial, spatial))


def reference_canvas(reference: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Product photos [B,Hr,Wr,3] in 0..1 to [B,3,height,width] in -1..1: scaled to fit, centred
    on white, as ``WanVACEPipeline.preprocess_conditions`` prepares ``reference_images``."""
    image = reference.permute(0, 3, 1, 2) * 2 - 1
    ref_h, ref_w = image.shape[-2:]
    scale = min(height / ref_h, width / ref_w)
    new_h, new_w = int(ref_h * scale), int(ref_w * scale)
    image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False)
    canvas = image.new_ones(image.shape[0], 3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, :, top:top + new_h, left:left + new_w] = image
    return canvas


class WanVACEPVTT(nn.Module):
    """Wan 2.1 VACE transformer + Wan VAE behind the PVTT model interface."""

    arch = "wan_vace"
    #: Attribute holding the diffusers transformer; acceleration swaps it (see pvtt_accel.denoiser).
    denoiser_attr = "transformer"

    def __init__(self, transformer: WanVACETransformer3DModel, vae: AutoencoderKLWan,
                 context: torch.Tensor | None = None, context_tokens: int = 1):
        super().__init__()
        check_compatible(transformer, vae)
        self.transformer = transformer
        # The VAE is the fixed coordinate system teacher, student and critic share; never trained
        # (``trainable_parameters`` leaves it out, and the trainers freeze what it leaves out).
        self.vae = vae.requires_grad_(False)
        text_dim = transformer.config.text_dim
        if context is None:
            context = torch.zeros(1, context_tokens, text_dim)
        context = context[None] if context.ndim == 2 else context
        if context.ndim != 3 or context.shape[0] != 1 or context.shape[2] != text_dim:
            raise ValueError(f"context embedding must be [tokens, {text_dim}] or [1, tokens, {text_dim}] (the "
                             f"transformer's text_dim), got {tuple(context.shape)}")
        # The prompt of a Condition that carries none (a folder without a text encoder). Fixed: the
        # trainers train the transformer only.
        self.context = nn.Parameter(context.detach().float().clone(), requires_grad=False)

    @classmethod
    def from_config(cls, config: dict) -> "WanVACEPVTT":
        """Rebuild (random weights) from ``config()``; checkpoint loading fills the weights in."""
        return cls(WanVACETransformer3DModel.from_config(config["transformer"]),
                   AutoencoderKLWan.from_config(config["vae"]), context_tokens=config["context_tokens"])

    def config(self) -> dict:
        return {"arch": self.arch, "transformer": plain_config(self.transformer), "vae": plain_config(self.vae),
                "context_tokens": self.context.shape[1]}

    def trainable_parameters(self):
        """What distillation trains: the transformer. The VAE and the fixed context stay frozen."""
        return self.transformer.parameters()

    def check_clip(self, frames: int, height: int, width: int) -> None:
        """Raise a clear error for a clip shape the VAE or the transformer patches cannot take."""
        check_clip_shape(self.transformer, self.vae, frames, height, width)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Clips [B,F,H,W,3] in 0..1 to normalised latents [B,z,f,h,w] (the posterior mode)."""
        self.check_clip(*video.shape[1:4])
        return self._encode(video_to_model(video))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents to clips [B,F,H,W,3] in 0..1."""
        mean, std = self._latent_stats(latents)
        z = (latents.float() * std + mean).to(self.vae.dtype)
        return model_to_video(self.vae.decode(z, return_dict=False)[0].float())

    @torch.no_grad()
    def condition(self, template: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> Condition:
        """VACE conditioning of designer inputs (see the module docstring for the layout)."""
        frames, height, width = template.shape[1:4]
        self.check_clip(frames, height, width)
        video = video_to_model(template.float())
        region = (mask[:, None] > 0.5).to(video.dtype)
        s, t = spatial_factor(self.vae), temporal_factor(self.vae)
        control = torch.cat([self._encode(video * (1 - region)), self._encode(video * region),
                             pack_mask(region, s, t)], dim=1)
        ref = self._encode(reference_canvas(reference.float(), height, width)[:, :, None])
        ref_control = torch.cat([ref, torch.zeros_like(ref), ref.new_zeros(ref.shape[0], s * s, *ref.shape[2:])], dim=1)
        return Condition(background=self._encode(video), region=latent_region(region, s, t),
                         features=torch.cat([ref_control, control], dim=2),
                         reference_slice=slice(0, REFERENCE_FRAMES))

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Condition,
                 keep_reference: torch.Tensor | bool = True) -> torch.Tensor:
        """Flow velocity [B,z,f,h,w]. Samples whose ``keep_reference`` is below 0.5 run without the
        reference frame (the unconditional branch); a mixed batch costs one call per group."""
        b = x_t.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).expand(b)
        keep = torch.as_tensor(keep_reference, device=x_t.device).float().expand(b) > 0.5
        context = cond.context if cond.context is not None else self.context.expand(b, -1, -1)
        outs, order = [], []
        for with_reference in (True, False):
            idx = torch.nonzero(keep == with_reference).flatten()
            if idx.numel():
                outs.append(self._run(x_t[idx], sigma[idx], cond.features[idx], context[idx], cond.reference_slice,
                                      with_reference))
                order.append(idx)
        return torch.cat(outs)[torch.argsort(torch.cat(order))]

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Condition,
                keep_reference: torch.Tensor | bool = True) -> torch.Tensor:
        """``velocity``; a DDP/FSDP wrapper only synchronises gradients of calls through ``forward``."""
        return self.velocity(x_t, sigma, cond, keep_reference)

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, features: torch.Tensor, context: torch.Tensor,
             reference: slice, with_reference: bool) -> torch.Tensor:
        """One transformer call, with or without the reference frame in front of the sequence."""
        control = features if with_reference else features[:, :, reference.stop:]
        hidden = x
        if with_reference:
            hidden = torch.cat([self._reference_slot(features[:, :self.vae.config.z_dim, reference], sigma).to(x), x], 2)
        dtype = self.transformer.dtype
        out = self.transformer(
            hidden_states=hidden.to(dtype),
            timestep=sigma * 1000,
            encoder_hidden_states=context.to(dtype),
            control_hidden_states=control.to(dtype),
            return_dict=False,
        )[0]
        if with_reference:
            out = out[:, :, reference.stop:]
        return out.to(x.dtype)

    @staticmethod
    def _reference_slot(reference: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The latent-sequence frame in front of the clip: the reference latent noised to ``sigma``.

        In WanVACEPipeline this frame is denoised along with the clip from the same initial noise,
        so at noise level sigma it is about ``(1 - sigma) * reference + sigma * noise``. A fixed
        noise draw keeps ``velocity`` a deterministic function of its inputs; the frame's own
        prediction is discarded.
        """
        noise = torch.randn(reference.shape[1:], generator=torch.Generator().manual_seed(REFERENCE_NOISE_SEED))
        s = sigma.view(-1, 1, 1, 1, 1).to(reference)
        return (1 - s) * reference + s * noise.to(reference)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B,3,F,H,W] in -1..1 to normalised latents (float32), like ``prepare_video_latents``."""
        latents = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode().float()
        mean, std = self._latent_stats(latents)
        return (latents - mean) / std

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32, device=like.device).view(shape)
        std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32, device=like.device).view(shape)
        return mean, std


def check_compatible(transformer: WanVACETransformer3DModel, vae: AutoencoderKLWan) -> None:
    """Fail at load time, with the numbers, when a transformer and a VAE cannot work together."""
    z, s = vae.config.z_dim, spatial_factor(vae)
    tc = transformer.config
    if tc.in_channels != z or (tc.out_channels or tc.in_channels) != z:
        raise ValueError(f"transformer in/out channels {tc.in_channels}/{tc.out_channels} must equal the VAE's "
                         f"z_dim {z}")
    if tc.vace_in_channels != 2 * z + s * s:
        raise ValueError(f"transformer vace_in_channels is {tc.vace_in_channels}, but a VAE with z_dim {z} and "
                         f"spatial factor {s} gives VACE control of 2*{z} + {s}*{s} = {2 * z + s * s} channels")
    if len(vae.config.latents_mean) != z or len(vae.config.latents_std) != z:
        raise ValueError(f"the VAE's latents_mean/latents_std need {z} values each (its z_dim)")


def check_clip_shape(transformer: WanVACETransformer3DModel, vae: AutoencoderKLWan, frames: int, height: int,
                     width: int) -> None:
    """Wan's VAE encodes ``1 + t*k`` frames (others are dropped silently) and the latent must
    split into whole transformer patches, so check both up front."""
    t, s = temporal_factor(vae), spatial_factor(vae)
    if (frames - 1) % t:
        lower = (frames - 1) // t * t + 1
        raise ValueError(f"the Wan VAE encodes 1 + {t}*k frames; got {frames}. Use {lower} or {lower + t} frames.")
    p_t, p_h, p_w = transformer.config.patch_size
    if latent_frames(frames, t) % p_t:
        raise ValueError(f"{frames} frames give {latent_frames(frames, t)} latent frames, not a multiple of the "
                         f"transformer's temporal patch {p_t}")
    if height % (s * p_h) or width % (s * p_w):
        raise ValueError(f"clip size {width}x{height} (width x height) must be a multiple of "
                         f"{s * p_w}x{s * p_h} (VAE factor {s} times the transformer patch)")
