"""A tiny random Wan 2.1 VACE model saved in the layout of a real diffusers repo, for fast CPU tests.

The folder has the five components of Wan-AI/Wan2.1-VACE-1.3B-diffusers: ``transformer/``
(WanVACETransformer3DModel), ``vae/`` (AutoencoderKLWan), ``text_encoder/`` (UMT5EncoderModel),
``tokenizer/`` (a T5 fast tokenizer) and ``scheduler/`` (UniPC with flow sigmas, shift 3), named in
``model_index.json``. The VAE compresses 4x in time and space (z_dim 4), so a 9x32x32 clip is a
4x3x8x8 latent and the VACE control has 2*4 + 4*4 = 24 channels. The transformer has 2 layers of
width 32; the UMT5 encoder has 2 layers of width 32 (the transformer's ``text_dim``, as 4096 is for
UMT5-XXL and the real model). The tokenizer is a small Unigram model trained here on a few
sentences, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACETransformer3DModel
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
#: UMT5-XXL's encoder shape (d_model 4096, 24 layers, 64 heads) shrunk; relative attention as the real one.
TEXT_ENCODER_CONFIG = {"d_model": TEXT_DIM, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
                       "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
                       "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}
#: The scheduler Wan-AI ships with its diffusers folders (480p: flow_shift 3.0).
SCHEDULER_CONFIG = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
                    "num_train_timesteps": 1000}
#: model_index.json as in Wan-AI/Wan2.1-VACE-*-diffusers.
MODEL_INDEX = {
    "_class_name": "WanVACEPipeline", "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanVACETransformer3DModel"],
    "transformer_2": [None, None], "vae": ["diffusers", "AutoencoderKLWan"], "boundary_ratio": None,
}
#: Sentences the fixture tokenizer's vocabulary is learned from (prompts in tests use these words).
TOKENIZER_CORPUS = [
    "a red bottle on a wooden table, studio light", "a blue running shoe turning slowly on a white floor",
    "a white coffee cup with steam, product video", "a green glass jar of cream, soft shadows",
    "worst quality, low quality, blurry, static, overexposed, deformed, watermark, subtitles",
    "camera pans left around the product, high detail, sharp focus, 4k",
]


def make_wan_vace_folder(root: Path, prompt_embeds: bool = True, clip: dict | None = CLIP, seed: int = 0,
                         text_encoder: bool = True) -> Path:
    """Write a random tiny Wan-VACE diffusers folder; ``clip`` goes to pvtt.json (None: no pvtt.json).

    ``prompt_embeds`` adds PVTT's optional fixed context (prompt_embeds.safetensors); ``text_encoder``
    False leaves ``text_encoder/`` and ``tokenizer/`` out (model_index names them as absent).
    """
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        WanVACETransformer3DModel(**TRANSFORMER_CONFIG).save_pretrained(root / "transformer")
        AutoencoderKLWan(**VAE_CONFIG).save_pretrained(root / "vae")
        embeds = torch.randn(1, 3, TEXT_DIM)
        if text_encoder:
            tokenizer = make_tokenizer()
            tokenizer.save_pretrained(root / "tokenizer")
            make_text_encoder(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id).save_pretrained(
                root / "text_encoder", safe_serialization=True)
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    index = MODEL_INDEX if text_encoder else {**MODEL_INDEX, "text_encoder": [None, None], "tokenizer": [None, None]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    if prompt_embeds:
        save_file({"prompt_embeds": embeds}, str(root / "prompt_embeds.safetensors"))
    if clip is not None:
        (root / "pvtt.json").write_text(json.dumps({"video": clip}))
    return root


def make_tokenizer():
    """A T5 fast tokenizer (Unigram + Metaspace, ``</s>`` appended, ``<pad>`` id 0) learned from a few sentences."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TOKENIZER_CORPUS, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def make_text_encoder(vocab_size: int, pad_token_id: int, eos_token_id: int):
    """A random UMT5 encoder of the fixture's text width."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                        decoder_start_token_id=pad_token_id, **TEXT_ENCODER_CONFIG)
    return UMT5EncoderModel(config).eval()


def designer_inputs(frames: int = 9, height: int = 32, width: int = 32, seed: int = 0):
    """A template clip [F,H,W,3], a moving box mask [F,H,W] and a product photo of another aspect."""
    g = torch.Generator().manual_seed(seed)
    template = torch.rand(frames, height, width, 3, generator=g)
    mask = torch.zeros(frames, height, width)
    for f in range(frames):
        mask[f, 8 + f // 3: 20 + f // 3, 6 + f: 18 + f] = 1
    reference = torch.rand(24, 16, 3, generator=g)
    return template, mask, reference
