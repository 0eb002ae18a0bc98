"""Product identity embeddings: PVTT's own tiny CNN, or a local CLIP / DINOv2 vision model.

Every encoder maps product crops [N,3,S,S] in 0..1 (see ``crops.py``) to L2-normalised
embeddings [N,D], so the cosine of two embeddings says how much two crops show the same product.
The shipped CNN is trained on the synthetic product videos (``train.py``); a CLIP or DINOv2 folder
is accepted for real footage, where a large pretrained model knows more about products than the
synthetic data can teach. Loaders return frozen modules (``eval()``, no gradients): the encoder is
a fixed judge inside a loss, gradients flow through it into the frames only.

Files are safetensors only; the CNN's config and training report live in the file's metadata, so
one file is enough to rebuild it. Pickle files are refused without being opened.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..models.checkpoint import PICKLE_SUFFIXES, write_atomic
from ..models.safetensors_header import safetensors_header
from ..paths import SHIPPED_MODELS

FORMAT = "pvtt_identity_encoder"
FORMAT_VERSION = 1
SHIPPED_IDENTITY_ENCODER = SHIPPED_MODELS / "pvtt_identity_encoder.safetensors"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HF_MODEL_TYPES = ("clip", "clip_vision_model", "dinov2")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class IdentityEncoder(nn.Module):
    """Four conv blocks with pooling (32 -> 4 pixels), global mean and max pooling, a linear head.

    GroupNorm rather than BatchNorm: the frozen encoder then behaves the same for a batch of one
    clip as for the training batches. Mean *and* max pooling keep both the product's overall colour
    and its strongest pattern responses.
    """

    def __init__(self, crop_size: int = 32, width: int = 24, dim: int = 64):
        super().__init__()
        self.crop_size, self.width, self.dim = crop_size, width, dim
        w = width
        self.features = nn.Sequential(_block(3, w), nn.AvgPool2d(2), _block(w, 2 * w), nn.AvgPool2d(2),
                                      _block(2 * w, 64), nn.AvgPool2d(2), _block(64, 64))
        self.head = nn.Linear(128, dim)

    def config(self) -> dict:
        return {"crop_size": self.crop_size, "width": self.width, "dim": self.dim}

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = self.features(crops.to(self.head.weight.dtype) * 2 - 1)
        return F.normalize(self.head(torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)), dim=1)


class HFVisionEncoder(nn.Module):
    """A Hugging Face CLIP vision tower or DINOv2 behind the IdentityEncoder API.

    Crops are resized to the model's input size and normalised with its mean/std; the embedding
    is CLIP's projected image embedding or DINOv2's pooled CLS token, L2-normalised.
    """

    def __init__(self, model: nn.Module, kind: str, image_size: int, mean, std):
        super().__init__()
        self.model, self.kind, self.crop_size = model, kind, image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(crops.float(), size=(self.crop_size, self.crop_size), mode="bilinear",
                          antialias=True, align_corners=False)
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        out = self.model(pixel_values=x)
        emb = out.image_embeds if self.kind == "clip" else out.pooler_output
        return F.normalize(emb.float(), dim=1)


def save_identity_encoder(path: str | Path, encoder: IdentityEncoder, report: dict) -> Path:
    """Write the weights with the config and ``report`` (training and AUC figures) in the metadata, atomically."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": encoder.config(), "report": report}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    header = {FORMAT: json.dumps(meta, sort_keys=True)}
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))
    return Path(path)


def read_identity_metadata(path: str | Path) -> dict:
    """The config and report of an identity-encoder file, validated, without loading weights."""
    path = Path(path)
    header, _ = safetensors_header(path, "copy it again or retrain it with `python -m pvtt_train identity-encoder`.")
    if FORMAT not in header:
        raise CheckpointError(f"{path.name} is not a PVTT identity encoder (no {FORMAT!r} metadata). Pass a file "
                              f"written by `python -m pvtt_train identity-encoder`, or a CLIP/DINOv2 folder.")
    try:
        meta = json.loads(header[FORMAT])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name}: its identity-encoder metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path.name}: its identity-encoder metadata lacks the encoder config; retrain it.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path.name} was written by a newer PVTT (format {meta['format_version']}); "
                              f"update PVTT to load it.")
    return meta


def _load_pvtt(path: Path) -> IdentityEncoder:
    meta = read_identity_metadata(path)
    try:
        encoder = IdentityEncoder(**meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: cannot rebuild the encoder from its config {meta['config']} "
                              f"({exc}); retrain it.") from exc
    try:
        encoder.load_state_dict(load_file(str(path)))
    except Exception as exc:  # missing/unexpected keys, size mismatches, unreadable tensors
        raise CheckpointError(f"{path.name}: weights do not match the encoder in its metadata ({exc}). "
                              f"The file was edited or is incomplete; retrain it.") from exc
    return encoder


def _hf_input_spec(folder: Path, kind: str, config_size: int) -> tuple[int, tuple, tuple]:
    """Input size, mean and std: preprocessor_config.json's when present, else the model family's."""
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    size = config_size
    pre_path = folder / "preprocessor_config.json"
    if pre_path.is_file():
        try:
            pre = json.loads(pre_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{pre_path} is not valid JSON ({exc}); fix it or delete it to use the "
                                  f"{kind} defaults.") from exc
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        crop = pre.get("crop_size")
        if isinstance(crop, dict):
            crop = crop.get("height")
        if isinstance(crop, int):
            size = crop
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{pre_path}: image_mean and image_std must have 3 values (RGB).")
    return size, mean, std


def _load_hf(folder: Path) -> HFVisionEncoder:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json. Pass a PVTT identity encoder (.safetensors) or a "
                              f"folder saved by transformers' save_pretrained (CLIP or DINOv2).")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{config_path} is not a valid JSON object ({exc}).") from exc
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{folder.name}: model_type {model_type!r} is not supported as an identity encoder; "
                              f"use a CLIP or DINOv2 model (model_type one of {HF_MODEL_TYPES}).")
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder} has no model.safetensors. PVTT loads only safetensors weights (pickled "
                              f".bin files can run code); re-save the model with save_pretrained(..., "
                              f"safe_serialization=True).")
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError(f"{folder.name} is a Hugging Face model; loading it needs the transformers "
                              f"package: pip install transformers") from exc
    load = {"local_files_only": True, "use_safetensors": True}
    try:
        if model_type == "dinov2":
            model = transformers.Dinov2Model.from_pretrained(folder, **load)
            kind = "dinov2"
        else:
            vision_config = transformers.CLIPVisionConfig.from_pretrained(folder)
            if model_type == "clip":  # a full CLIP model: its projection size is set at the top level
                vision_config.projection_dim = transformers.CLIPConfig.from_pretrained(folder).projection_dim
            model = transformers.CLIPVisionModelWithProjection.from_pretrained(folder, config=vision_config, **load)
            kind = "clip"
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{folder.name}: transformers could not load the {model_type} model ({exc}). "
                              f"Check that the folder is complete (config.json + model.safetensors).") from exc
    size, mean, std = _hf_input_spec(folder, kind, int(model.config.image_size))
    return HFVisionEncoder(model, kind, size, mean, std)


def load_identity_encoder(path: Path | str | None = None) -> nn.Module:
    """A frozen identity encoder: the shipped CNN (None), a saved CNN (.safetensors) or a CLIP/DINOv2 folder."""
    path = SHIPPED_IDENTITY_ENCODER if path is None else Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path.name} is a pickle-format file; PVTT loads only .safetensors (pickles can "
                              f"run code). Convert it with safetensors, or pass a Hugging Face folder that has "
                              f"model.safetensors.")
    if path.is_dir():
        encoder = _load_hf(path)
    elif path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise CheckpointError(f"{path.name}: expected a .safetensors identity encoder or a CLIP/DINOv2 folder.")
        encoder = _load_pvtt(path)
    else:
        raise CheckpointError(f"identity encoder not found: {path}. Pass a .safetensors file written by "
                              f"`python -m pvtt_train identity-encoder`, a CLIP/DINOv2 folder, or nothing for "
                              f"the shipped encoder.")
    return encoder.eval().requires_grad_(False)
