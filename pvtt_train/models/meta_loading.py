"""Build a model without allocating its weights, then fill it straight from safetensors in the target dtype.

``torch.nn.Module`` constructors allocate and randomly initialise every parameter; for a 14B teacher
that is 56 GB of float32 written once and thrown away when the file is copied in. Here the modules
are built under accelerate's ``init_empty_weights`` (parameters on the meta device; buffers such as
RoPE tables stay real, since no file holds them), and each tensor is read from disk on its own,
converted to the target dtype and assigned in place (``load_state_dict(assign=True)``), so the peak
is the model in its final dtype plus one tensor.

``TensorSource`` reads one ``.safetensors`` file or a sharded set behind a
``*.safetensors.index.json`` (``{"weight_map": {key: shard}}``), as large checkpoints ship.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from .safetensors_header import safetensors_header

INDEX_SUFFIX = ".safetensors.index.json"


def is_index(path: Path) -> bool:
    return Path(path).name.endswith(INDEX_SUFFIX)


class TensorSource:
    """Names, shapes and tensors of a safetensors file or sharded set, read lazily, one tensor at a time."""

    def __init__(self, path: str | Path, fix: str = "copy the file again."):
        self.path = Path(path)
        self.fix = fix
        if is_index(self.path):
            index = _read_index(self.path, fix)
            self.files = {key: self.path.parent / shard for key, shard in index.items()}
            missing = sorted({str(p) for p in self.files.values() if not p.is_file()})
            if missing:
                raise CheckpointError(f"{self.path.name} names shards that are missing: {', '.join(missing[:3])}; "
                                      f"copy every shard of the model.")
        else:
            self.files = {key: self.path for key in safetensors_header(self.path, self.fix)[1]}
        self._metadata: dict | None = None

    def keys(self) -> list[str]:
        return list(self.files)

    @property
    def metadata(self) -> dict:
        """The string metadata of the (first) file's header."""
        if self._metadata is None:
            first = next(iter(self.files.values()), self.path)
            self._metadata = safetensors_header(first, self.fix)[0] if first.suffix == ".safetensors" else {}
        return self._metadata

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the headers only (no tensor is read)."""
        shapes = {}
        for path, keys in self._by_file(self.files).items():
            with safe_open(str(path), framework="pt") as fh:
                shapes.update({k: tuple(fh.get_slice(k).get_shape()) for k in keys})
        return shapes

    def read(self, names: dict[str, str], device: str | torch.device = "cpu"):
        """Yield ``(target name, tensor)`` for ``names = {source key: target name}``, each tensor read on
        its own, straight onto ``device``, as stored."""
        wanted = {k: self.files[k] for k in names}
        for path, keys in self._by_file(wanted).items():
            try:
                with safe_open(str(path), framework="pt", device=str(device)) as fh:
                    tensors = ((names[key], fh.get_tensor(key)) for key in keys)
                    yield from tensors
            except CheckpointError:
                raise
            except Exception as exc:
                raise CheckpointError(f"{path.name}: weights could not be read ({exc}); the file may be "
                                      f"truncated: {self.fix}") from exc

    @staticmethod
    def _by_file(files: dict[str, Path]) -> dict[Path, list[str]]:
        grouped: dict[Path, list[str]] = {}
        for key, path in files.items():
            grouped.setdefault(path, []).append(key)
        return grouped


def _read_index(path: Path, fix: str) -> dict[str, str]:
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors index (a JSON object with a 'weight_map'): {exc}; "
                              f"{fix}") from exc
    shards = {s for s in weight_map.values() if not str(s).endswith(".safetensors")}
    if shards:
        raise CheckpointError(f"{path.name} points at non-safetensors shards ({', '.join(sorted(shards)[:3])}); "
                              f"PVTT loads only .safetensors (pickles can run code).")
    return {str(k): str(v) for k, v in weight_map.items()}


def build_empty(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` with its parameters on the meta device: nothing allocated, nothing initialised."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def keep_fp32(model: torch.nn.Module) -> set[str]:
    """State-dict names that stay float32 in a half-precision model: those of diffusers' own
    ``_keep_in_fp32_modules`` (timestep embedder, modulation tables, norms), as ``from_pretrained`` keeps them."""
    names = set()
    for prefix, module in model.named_modules():
        keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
        if keep:
            base = f"{prefix}." if prefix else ""
            names |= {base + n for n in module.state_dict() if keep & set(n.split("."))}
    return names


def cast_for(model: torch.nn.Module, dtype: torch.dtype | None) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``cast(name, tensor)``: floating tensors to ``dtype`` (None: as stored), except ``keep_fp32`` ones."""
    fp32 = keep_fp32(model) if dtype is not None and dtype != torch.float32 else set()

    def cast(name: str, tensor: torch.Tensor) -> torch.Tensor:
        target = tensor.dtype if dtype is None or not tensor.is_floating_point() else \
            torch.float32 if name in fp32 else dtype
        out = tensor.to(target)
        # A tensor of the file's own dtype may still share the file's buffer (alignment as stored): give
        # the model memory of its own, allocated like any weight, so kernels see what they would otherwise.
        return out.clone() if out.data_ptr() == tensor.data_ptr() else out

    return cast


def assign_weights(model: torch.nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], what: str, fix: str,
                   dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Fill an empty (meta) ``model`` with ``tensors`` by assignment, strictly, each cast on arrival
    (``cast_for``): a missing, extra or wrongly shaped tensor is a CheckpointError naming ``what`` and
    ending with ``fix``. Buffers no file holds (computed at construction) follow to ``device``/``dtype``."""
    expected = model.state_dict()
    cast = cast_for(model, dtype)
    state = {}
    for name, tensor in tensors:
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{what}: weights do not match the architecture: tensor {name} has shape "
                                  f"{tuple(tensor.shape)}, the architecture needs {tuple(expected[name].shape)}; "
                                  f"{fix}")
        state[name] = cast(name, tensor)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{what}: weights do not match the architecture (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}); {fix}")
    model.load_state_dict(state, strict=True, assign=True)
    still_empty = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if still_empty:
        raise CheckpointError(f"{what}: no weights for {still_empty[:5]}; {fix}")
    loaded = set(state)
    for module_name, module in model.named_modules():
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            full = f"{module_name}.{buffer_name}" if module_name else buffer_name
            if full not in loaded:  # computed at construction (e.g. RoPE tables): device and dtype like the rest
                setattr(module, buffer_name, cast(full, buffer.to(device)))
    return model
