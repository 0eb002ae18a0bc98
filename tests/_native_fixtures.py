"""Tiny Wan-VACE teacher and 4-step student shaped the way ComfyUI's Wan loader reads a model.

ComfyUI derives a Wan model's config from its tensors with fixed rules (heads of 128 channels,
``freq_dim`` 256, ``text_dim`` 4096, patch 1x2x2), so the transformer here is one 128-wide head, with
UMT5-XXL's 4096-wide text input; the VAE is the small one of ``_wan_fixtures`` (PVTT's side only), or
``Z16_VAE``: Wan 2.1's latent layout (16 channels, 8x spatial, 4x temporal) at a tiny width, so the
transformer takes the latents of ComfyUI's hard-coded Wan 2.1 VAE (``full_wan21_vae``).
The student is the teacher with every transformer weight moved a little, saved with a few-step
sampler (timesteps 1000/750/500/250, shift 5), as ``pvtt_train distill`` saves one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from _wan_fixtures import CLIP, TRANSFORMER_CONFIG, VAE_CONFIG
from diffusers import AutoencoderKLWan, WanVACETransformer3DModel

from pvtt_train.models.checkpoint import save_checkpoint
from pvtt_train.models.wan_vace import WanVACEPVTT

COMFY_TRANSFORMER = {**TRANSFORMER_CONFIG, "num_attention_heads": 1, "attention_head_dim": 128, "ffn_dim": 128,
                     "freq_dim": 256, "text_dim": 4096, "rope_max_seq_len": 1024, "num_layers": 2,
                     "vace_layers": [0], "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6}
#: Wan 2.1's latent layout at a tiny width (latents_mean/std: diffusers' Wan 2.1 defaults, as ComfyUI's Wan21).
Z16_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
           "temperal_downsample": [False, True, True]}
STUDENT_TIMESTEPS = [1000, 750, 500, 250]
STUDENT_SHIFT = 5.0


def comfy_shaped_model(seed: int = 0, vae_config: dict = VAE_CONFIG, transformer: dict | None = None) -> WanVACEPVTT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        z, s = vae_config["z_dim"], 2 ** len(vae_config["temperal_downsample"])
        config = {**COMFY_TRANSFORMER, "in_channels": z, "out_channels": z, "vace_in_channels": 2 * z + s * s,
                  **(transformer or {})}
        model = WanVACEPVTT(WanVACETransformer3DModel(**config), AutoencoderKLWan(**vae_config))
        with torch.no_grad():  # diffusers zero-initialises some layers (VACE after_proj); give every weight a value
            for p in model.transformer.parameters():
                if not p.any():
                    p.normal_(0, 0.02)
    return model.eval()


def perturbed_student(teacher: WanVACEPVTT, seed: int = 1, scale: float = 0.02) -> WanVACEPVTT:
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.transformer.parameters():
            p.add_(scale * (p.abs().mean() + 0.01) * torch.randn(p.shape, generator=g))
    return student


def save_pair(root: Path, teacher: WanVACEPVTT, student: WanVACEPVTT, clip: dict = CLIP) -> tuple[Path, Path]:
    """The teacher (Euler + CFG) and the 4-step student as PVTT checkpoints in ``root``."""
    schedule = {"shift": STUDENT_SHIFT, "num_train_timesteps": 1000}
    teacher_path = save_checkpoint(root / "teacher.safetensors", teacher, {
        "stage": "teacher", "schedule": schedule, "video": clip,
        "sampler": {"kind": "euler_cfg", "steps": 8, "cfg": 1.0}})
    student_path = save_checkpoint(root / "student.safetensors", student, {
        "stage": "student", "schedule": schedule, "video": clip,
        "sampler": {"kind": "few_step", "steps": 4, "timesteps": STUDENT_TIMESTEPS}})
    return teacher_path, student_path


def full_wan21_vae(seed: int = 5) -> AutoencoderKLWan:
    """A random Wan 2.1 VAE in the layout ComfyUI hard-codes (diffusers' defaults: dim 96, z 16), float32."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKLWan().eval()
