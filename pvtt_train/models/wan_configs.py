"""The published Wan 2.1 VACE configurations, so memory can be planned (and a GPU checked) without a download.

Values are those of ``Wan-AI/Wan2.1-VACE-1.3B-diffusers`` and ``Wan-AI/Wan2.1-VACE-14B-diffusers``
(``transformer/config.json``, ``vae/config.json``, ``text_encoder/config.json``), as diffusers'
``scripts/convert_wan_to_diffusers.py`` writes them. Built on the meta device they count
2,153,972,032 (1.3B, of which 734 M in the 15 VACE blocks) and 17,337,592,896 (14B) transformer
parameters; the VAE 126.9 M; the UMT5-XXL encoder 5.68 B.
"""

from __future__ import annotations

#: Wan 2.1 VAE (``AutoencoderKLWan``): z_dim 16, 8x in space, 4x in time.
WAN21_VAE = {
    "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
    "temperal_downsample": [False, True, True], "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
}

#: UMT5-XXL encoder (``UMT5EncoderModel``), the prompt encoder of every Wan 2.1 model.
UMT5_XXL = {
    "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
}

_SHARED_TRANSFORMER = {
    "patch_size": [1, 2, 2], "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096,
    "freq_dim": 256, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    "added_kv_proj_dim": None, "vace_in_channels": 96,
}

#: ``WanVACETransformer3DModel`` configs by name.
TRANSFORMERS = {
    "wan2.1-vace-1.3b": {**_SHARED_TRANSFORMER, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30,
                         "vace_layers": list(range(0, 30, 2))},
    "wan2.1-vace-14b": {**_SHARED_TRANSFORMER, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40,
                        "vace_layers": list(range(0, 40, 5))},
}

#: Published sizes (transformer parameters), for the docs and the tests.
PUBLISHED_PARAMETERS = {"wan2.1-vace-1.3b": 2.15e9, "wan2.1-vace-14b": 17.3e9}

#: Wan 2.1's native clip and prompt length (WanVACEPipeline's defaults).
NATIVE_VIDEO = {"frames": 81, "height": 480, "width": 832}
PROMPT_TOKENS = 512


def named_config(name: str) -> dict:
    """The PVTT model config (as ``WanVACEPVTT.config()`` writes it) of a published Wan-VACE size."""
    key = name.lower()
    if key not in TRANSFORMERS:
        raise KeyError(name)
    return {"arch": "wan_vace", "transformer": dict(TRANSFORMERS[key]), "vae": dict(WAN21_VAE),
            "context_tokens": PROMPT_TOKENS, "text_encoder": dict(UMT5_XXL)}
