"""A tiny random Wan 2.1 VACE model saved in the layout of a real diffusers repo, for fast CPU tests.

The VAE compresses 4x in time and space (z_dim 4), so a 9x32x32 clip is a 4x3x8x8 latent and the
VACE control has 2*4 + 4*4 = 24 channels. The transformer has 2 layers of width 32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanVACETransformer3DModel
from safetensors.torch import save_file

TEXT_DIM = 32
CLIP = {"frames": 9, "height": 32, "width": 32}

VAE_CONFIG = {
    "base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4], "num_res_blocks": 1, "temperal_downsample": [True, True],
    # Non-trivial statistics, so a missing (de)normalisation shows up in the tests.
    "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [0.5, 1.5, 1.0, 2.0],
    "scale_factor_temporal": 4, "scale_factor_spatial": 4,
}
TRANSFORMER_CONFIG = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4,
    "out_channels": 4, "text_dim": TEXT_DIM, "freq_dim": 32, "ffn_dim": 64, "num_layers": 2,
    "rope_max_seq_len": 32, "vace_layers": [0], "vace_in_channels": 24,
}
#: model_index.json as in Wan-AI/Wan2.1-VACE-*-diffusers, with the text encoder left out.
MODEL_INDEX = {
    "_class_name": "WanVACEPipeline", "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": [None, None],
    "tokenizer": [None, None], "transformer": ["diffusers", "WanVACETransformer3DModel"],
    "transformer_2": [None, None], "vae": ["diffusers", "AutoencoderKLWan"], "boundary_ratio": None,
}


def make_wan_vace_folder(root: Path, prompt_embeds: bool = True, clip: dict | None = CLIP, seed: int = 0) -> Path:
    """Write a random tiny Wan-VACE diffusers folder; ``clip`` goes to pvtt.json (None: no pvtt.json)."""
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        WanVACETransformer3DModel(**TRANSFORMER_CONFIG).save_pretrained(root / "transformer")
        AutoencoderKLWan(**VAE_CONFIG).save_pretrained(root / "vae")
        embeds = torch.randn(1, 3, TEXT_DIM)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    if prompt_embeds:
        save_file({"prompt_embeds": embeds}, str(root / "prompt_embeds.safetensors"))
    if clip is not None:
        (root / "pvtt.json").write_text(json.dumps({"video": clip}))
    return root


def designer_inputs(frames: int = 9, height: int = 32, width: int = 32, seed: int = 0):
    """A template clip [F,H,W,3], a moving box mask [F,H,W] and a product photo of another aspect."""
    g = torch.Generator().manual_seed(seed)
    template = torch.rand(frames, height, width, 3, generator=g)
    mask = torch.zeros(frames, height, width)
    for f in range(frames):
        mask[f, 8 + f // 3: 20 + f // 3, 6 + f: 18 + f] = 1
    reference = torch.rand(24, 16, 3, generator=g)
    return template, mask, reference
