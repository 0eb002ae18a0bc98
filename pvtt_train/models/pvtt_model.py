"""PVTT models: a diffusers Wan video transformer plus the conditioning template transfer needs.

Every architecture exposes the same small interface, so samplers, distillation and the ComfyUI
nodes never branch on the model type:

- ``condition(template, mask, reference)`` turns designer inputs ([B,F,H,W,3] in 0..1, a
  [B,F,H,W] mask with 1 = the product to replace, a [B,H,W,3] product photo) into a ``Condition``;
- ``velocity(x_t, sigma, cond, keep_reference)`` predicts the flow velocity in model space;
- ``encode`` / ``decode`` map clips in 0..1 to model space and back;
- ``config()`` is the JSON that rebuilds the model from a checkpoint;
- ``forward`` is ``velocity`` (so distributed wrappers see the calls) and
  ``enable_gradient_checkpointing()`` trades compute for memory in training;
- ``trainable_parameters()`` is what training may update (frozen parts such as a VAE are left out).

``WanConcatPVTT`` is the embedded tiny default: pixel space, conditioning concatenated to the
noisy input of a ``WanTransformer3DModel``. The production Wan 2.1 VACE model lives in
``wan_vace.py`` and plugs into the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from torch import nn

from ..conditioning import aligned_paste
from .paste_residual import PREDICTIONS, RESIDUAL_VELOCITY

#: Channels of the concatenated condition: masked template (3), mask as -1/1 (1), aligned paste (3).
CONCAT_CONDITION_CHANNELS = 7


@dataclass
class Condition:
    """Conditioning of one batch, in model space.

    ``background`` is the template in model space and ``region`` the edit mask at model resolution
    (1 = regenerate); samplers use them to re-inject the background. ``features`` is what the
    network consumes. ``reference_slice`` marks the part of ``features`` that carries the product:
    channels for ``wan_concat`` (the aligned paste), the leading reference frame for ``wan_vace``.
    Only the model that built a Condition interprets it.

    ``context`` is the per-clip prompt embedding [B, L, text_dim] for models that take text
    (``wan_vace``; None: the model's own fixed context). ``negative_context`` is the negative
    prompt's; when it is set, CFG guides on prompt vs negative prompt with the reference in both
    branches, as ``WanVACEPipeline`` does; when it is None, CFG drops the reference instead
    (``sampling.samplers.guided_velocity``). The embedded ``wan_concat`` model ignores both: its
    learned context token is its prompt.
    """

    background: torch.Tensor  # [B, C, F, h, w]
    region: torch.Tensor  # [B, 1, F, h, w]
    features: torch.Tensor  # [B, K, F, h, w]
    reference_slice: slice
    context: torch.Tensor | None = None  # [B, L, text_dim]
    negative_context: torch.Tensor | None = None  # [B, L, text_dim]

    def to(self, device=None, dtype=None) -> "Condition":
        move = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        return replace(self, background=move(self.background), region=move(self.region), features=move(self.features),
                       context=move(self.context), negative_context=move(self.negative_context))

    def repeat(self, n: int) -> "Condition":
        """The batch tiled n times (order: the whole batch, then again), to match ``torch.cat([x] * n)``."""
        tile = lambda t: None if t is None else torch.cat([t] * n)  # noqa: E731
        return replace(self, background=tile(self.background), region=tile(self.region), features=tile(self.features),
                       context=tile(self.context), negative_context=tile(self.negative_context))

    def with_prompts(self, context: torch.Tensor | None, negative_context: torch.Tensor | None = None) -> "Condition":
        """This condition with prompt embeddings ([B or 1, L, D]; one row is shared by the batch)."""
        if negative_context is not None and context is None:
            raise ValueError("a negative prompt embedding needs a prompt embedding to guide against")
        b = self.background.shape[0]
        fit = lambda t: None if t is None else t.to(self.background.device).expand(b, -1, -1)  # noqa: E731
        return replace(self, context=fit(context), negative_context=fit(negative_context))

    def prompt_pair(self) -> "Condition":
        """The batch twice for one CFG call: first with the prompt, then with the negative prompt."""
        pair = self.repeat(2)
        return replace(pair, context=torch.cat([self.context, self.negative_context]), negative_context=None)


def video_to_model(video: torch.Tensor) -> torch.Tensor:
    """[B,F,H,W,3] in 0..1 to pixel model space [B,3,F,H,W] in -1..1."""
    return video.permute(0, 4, 1, 2, 3) * 2 - 1


def model_to_video(x: torch.Tensor) -> torch.Tensor:
    """Pixel model space [B,3,F,H,W] to [B,F,H,W,3] in 0..1 (clamped)."""
    return ((x.permute(0, 2, 3, 4, 1) + 1) / 2).clamp(0, 1)


class WanConcatPVTT(nn.Module):
    """Tiny default: pixel-space WanTransformer3DModel with channel-concatenated conditioning."""

    arch = "wan_concat"
    #: Attribute holding the diffusers transformer; acceleration swaps it (see pvtt_accel.denoiser).
    denoiser_attr = "backbone"

    def __init__(self, backbone_config: dict, context_tokens: int = 1, prediction: str = "velocity"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        cfg = dict(backbone_config)
        cfg["in_channels"] = 3 + CONCAT_CONDITION_CHANNELS
        cfg["out_channels"] = 3
        self.backbone = WanTransformer3DModel(**cfg)
        # Stands in for the text prompt: PVTT is conditioned on video, mask and product, not text.
        self.context = nn.Parameter(torch.zeros(1, context_tokens, self.backbone.config.text_dim))
        self._backbone_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        self._context_tokens = context_tokens
        #: "velocity": the backbone predicts the flow velocity; "paste_residual": it predicts the clean clip's
        #: difference from the paste composite (``paste_residual``; ``paste_residual_edm`` with EDM's skip around
        #: the paste), returned as the velocity it implies.
        self.prediction = prediction

    def config(self) -> dict:
        config = {"arch": self.arch, "backbone_config": self._backbone_config, "context_tokens": self._context_tokens}
        if self.prediction != "velocity":  # older checkpoints have no key and read as "velocity"
            config["prediction"] = self.prediction
        return config

    def trainable_parameters(self):
        """What distillation trains: everything (the backbone and its learned context token)."""
        return self.parameters()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video_to_model(video)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return model_to_video(x)

    def condition(self, template: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> Condition:
        paste = torch.from_numpy(np.stack([
            aligned_paste(r.cpu().numpy(), m.cpu().numpy()) for r, m in zip(reference, mask)
        ])).to(template)
        return self.condition_from_paste(template, mask, paste)

    def condition_from_paste(self, template: torch.Tensor, mask: torch.Tensor, paste: torch.Tensor) -> Condition:
        """Build the condition when the aligned paste is already known (training data path)."""
        region = mask[:, None].to(template)
        background = video_to_model(template)
        pasted = video_to_model(paste) * region  # product in -1..1, 0 outside the mask
        features = torch.cat([background * (1 - region), region * 2 - 1, pasted], dim=1)
        return Condition(background=background, region=region, features=features, reference_slice=slice(4, 7))

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Condition,
                 keep_reference: torch.Tensor | bool = True) -> torch.Tensor:
        features = cond.features
        if keep_reference is not True:
            keep = torch.as_tensor(keep_reference, dtype=features.dtype, device=features.device)
            keep = keep.view(-1, 1, 1, 1, 1) if keep.ndim else keep
            features = features.clone()
            features[:, cond.reference_slice] = features[:, cond.reference_slice] * keep
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        out = self.backbone(
            hidden_states=torch.cat([x_t, features], dim=1),
            timestep=sigma * 1000,
            encoder_hidden_states=self.context.expand(x_t.shape[0], -1, -1),
            return_dict=False,
        )[0]
        if self.prediction in RESIDUAL_VELOCITY:
            return RESIDUAL_VELOCITY[self.prediction](out, x_t, sigma, features)
        return out

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Condition,
                keep_reference: torch.Tensor | bool = True) -> torch.Tensor:
        """``velocity``; a DDP/FSDP wrapper only synchronises gradients of calls through ``forward``."""
        return self.velocity(x_t, sigma, cond, keep_reference)

    def enable_gradient_checkpointing(self) -> None:
        self.backbone.enable_gradient_checkpointing()


TINY_BACKBONE = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "text_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 4,
    "rope_max_seq_len": 32,
}


def build_model(config: dict) -> nn.Module:
    """Rebuild a PVTT model from the ``config()`` stored in a checkpoint's metadata."""
    arch = config.get("arch")
    if arch == WanConcatPVTT.arch:
        return WanConcatPVTT(config["backbone_config"], config.get("context_tokens", 1),
                             config.get("prediction", "velocity"))
    if arch == "wan_vace":
        from .wan_vace import WanVACEPVTT

        return WanVACEPVTT.from_config(config)
    raise ValueError(
        f"unknown PVTT architecture {arch!r} in checkpoint metadata; this PVTT version knows "
        f"'wan_concat' and 'wan_vace'. Update PVTT, or re-export the checkpoint with pvtt_train."
    )
