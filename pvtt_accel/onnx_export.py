"""Export a PVTT model's denoiser to ONNX, for ONNX Runtime (CPU) and TensorRT (CUDA).

Only the denoiser is exported (see ``pvtt_accel.denoiser``): conditioning, sampler and decoding
stay in PyTorch, so one graph serves every sampler and both backends. The graph takes positional
tensors named like the denoiser's keywords (``hidden_states``, ``timestep``,
``encoder_hidden_states`` and, for Wan-VACE, ``control_hidden_states``) and returns ``velocity``.

Export goes through ``torch.export`` and onnxscript (``dynamo=True``): the legacy TorchScript
exporter has no ONNX translation for ``aten::rms_norm`` (Wan's QK-norm). A ``ShapeProfile`` fixes
the batch sizes the graph accepts; frames, height and width always follow the checkpoint's video
size, because the denoiser's token count (and RoPE table) depends on them.

``cached_export`` keeps exports in a folder keyed by the checkpoint's sha256, the profile and the
exporter versions, with a JSON sidecar, so a second run reuses the graph instead of exporting again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ._train import train_module
from .denoiser import LoadedModel, capture_denoiser_inputs, get_denoiser
from .optional import require

_checkpoint = train_module("models.checkpoint")
file_sha256, write_atomic = _checkpoint.file_sha256, _checkpoint.write_atomic

logger = logging.getLogger("PVTT")

#: The denoiser's tensor keywords, in graph-input order (the last one only for Wan-VACE).
INPUT_NAMES = ("hidden_states", "timestep", "encoder_hidden_states", "control_hidden_states")
OUTPUT_NAME = "velocity"
#: Opset 20 runs in onnxruntime >= 1.17; TensorRT 10's parser reads it (older 10.x: see their support matrix).
OPSET = 20
#: Version of PVTT's graph contract (wrapper, names, opset); part of every cache key.
EXPORT_FORMAT = 1
#: Weights above this are written as external data: one protobuf cannot exceed 2 GiB.
EXTERNAL_DATA_BYTES = 1_800_000_000


class ShapeOutsideProfile(ValueError):
    """A denoiser call whose input shapes the exported graph or engine was not built for."""


@dataclass(frozen=True)
class ShapeProfile:
    """The batch sizes an exported graph (and an engine built from it) accepts.

    Static by default (batch 1, the fastest graph and engine): a few-step student calls the
    denoiser once per clip and step. A dynamic profile spans ``min_batch..max_batch`` and TensorRT
    tunes its kernels for ``opt_batch``; ``wan_concat`` with classifier-free guidance calls it at
    twice the clip batch.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1

    def __post_init__(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"a shape profile needs 1 <= min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")

    @classmethod
    def static(cls, batch: int = 1) -> ShapeProfile:
        return cls(batch, batch, batch)

    @classmethod
    def dynamic(cls, min_batch: int = 1, opt_batch: int = 2, max_batch: int = 4) -> ShapeProfile:
        return cls(min_batch, opt_batch, max_batch)

    @property
    def is_static(self) -> bool:
        return self.min_batch == self.max_batch

    @property
    def example_batch(self) -> int:
        """Batch of the example inputs traced at export. A dynamic batch is traced at 2 or more:
        torch.export specialises a traced size of 1 to a constant."""
        return self.opt_batch if self.is_static else max(self.opt_batch, 2)

    def tag(self, video: dict) -> str:
        """For file names: ``static-1x9x16x16`` (BxFxHxW) or ``dynamic-1-2-4x9x16x16`` (min-opt-max batch)."""
        size = f"{video['frames']}x{video['height']}x{video['width']}"
        if self.is_static:
            return f"static-{self.min_batch}x{size}"
        return f"dynamic-{self.min_batch}-{self.opt_batch}-{self.max_batch}x{size}"

    def describe(self) -> str:
        if self.is_static:
            return f"static batch {self.min_batch}"
        return f"batch {self.min_batch} to {self.max_batch} (tuned for {self.opt_batch})"


@dataclass(frozen=True)
class OnnxExport:
    """What an exported graph is: where it lies, its inputs as the ONNX file declares them, and
    the checkpoint, profile and video size it was exported for."""

    path: Path
    input_names: tuple[str, ...]
    #: name -> dims as in the graph: ints, and the batch dim's symbolic name when dynamic.
    input_shapes: dict[str, list[int | str]]
    output_name: str
    opset: int
    checkpoint_sha256: str
    profile: ShapeProfile
    video: dict
    external_data: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path), "input_names": list(self.input_names)}

    @classmethod
    def from_dict(cls, data: dict) -> OnnxExport:
        return cls(**{**data, "path": Path(data["path"]), "input_names": tuple(data["input_names"]),
                      "profile": ShapeProfile(**data["profile"])})

    def shape_bounds(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """name -> (smallest, largest) accepted shape."""
        return {name: ((self.profile.min_batch, *dims[1:]), (self.profile.max_batch, *dims[1:]))
                for name, dims in self.input_shapes.items()}


class DenoiserGraph(nn.Module):
    """The denoiser behind positional tensor inputs and one output, the form ONNX needs."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, hidden_states, timestep, encoder_hidden_states, control_hidden_states=None) -> torch.Tensor:
        extra = {} if control_hidden_states is None else {"control_hidden_states": control_hidden_states}
        return self.denoiser(hidden_states=hidden_states, timestep=timestep,
                             encoder_hidden_states=encoder_hidden_states, return_dict=False, **extra)[0]


def denoiser_inputs(hidden_states, timestep, encoder_hidden_states, control_hidden_states=None,
                    return_dict: bool = False) -> dict[str, torch.Tensor]:
    """The tensor keywords of one denoiser call, by graph-input name (replacements share this)."""
    if return_dict:
        raise ValueError("accelerated denoisers return a 1-tuple only; call them with return_dict=False")
    values = (hidden_states, timestep, encoder_hidden_states, control_hidden_states)
    return {name: value for name, value in zip(INPUT_NAMES, values) if value is not None}


def shape_mismatch(inputs: dict[str, torch.Tensor],
                   bounds: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str | None:
    """Why ``inputs`` do not fit ``bounds`` (name -> smallest, largest shape), or None if they do."""
    if set(inputs) != set(bounds):
        return f"the call passes {sorted(inputs)}, the graph takes {sorted(bounds)}"
    for name, tensor in inputs.items():
        low, high = bounds[name]
        shape = tuple(tensor.shape)
        if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            span = "x".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(low, high))
            return f"{name} has shape {'x'.join(map(str, shape))}, the graph takes {span}"
    return None


@functools.lru_cache(maxsize=32)
def _hash_files(files: tuple[tuple[str, str, int, int], ...]) -> str:
    """sha256 over (relative name, content sha256) pairs; size and mtime are in the key so an
    edited file is hashed again while an unchanged multi-GB checkpoint is hashed once per process."""
    if len(files) == 1:
        return file_sha256(files[0][1], length=64)
    digest = hashlib.sha256()
    for name, path, _size, _mtime in files:
        digest.update(f"{name}\0{file_sha256(path, length=64)}\n".encode())
    return digest.hexdigest()


def files_sha256(root: Path, paths: list[Path]) -> str:
    """One sha256 for a set of files: a single file's own sha256, else one over names and contents."""
    entries = []
    for path in sorted(paths):
        stat = path.stat()
        entries.append((path.relative_to(root).as_posix(), str(path), stat.st_size, stat.st_mtime_ns))
    return _hash_files(tuple(entries))


def checkpoint_label(path: str | Path) -> str:
    """A checkpoint's name in cache file names: a file's stem, a model folder's name."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a PVTT checkpoint file, or of every file in a diffusers model folder."""
    path = Path(path)
    if path.is_dir():
        return files_sha256(path, [p for p in path.rglob("*") if p.is_file()])
    return files_sha256(path.parent, [path])


def onnx_sha256(path: str | Path) -> str:
    """sha256 of an ONNX graph together with the external-data files it references."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    return files_sha256(path.parent, [path, *(path.parent / name for name in locations)])


def cpu_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations, using torch's thread count.

    Its worker threads do not spin-wait after a run: the sampler runs PyTorch between denoiser
    calls, and spinning onnxruntime threads would take the cores from it (measured on 2 busy cores:
    eager denoiser calls in the same process ran ~100x slower). onnxruntime is imported here, not at module level, so
    exporting for TensorRT on a GPU machine does not need it installed.
    """
    require("ONNX Runtime", "onnxruntime", alternative="Or use PVTT Accelerate with its auto settings instead.")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_denoiser_onnx(loaded: LoadedModel, path: str | Path, profile: ShapeProfile | None = None) -> OnnxExport:
    """Export ``loaded``'s denoiser to ``path`` for ``profile`` (static batch 1 by default).

    The graph is traced on real denoiser inputs (``capture_denoiser_inputs``), checked with
    ``onnx.checker`` and moved into place only when complete; weights over ~1.8 GB go to an
    external-data file beside it (``<name>.data``).
    """
    require("ONNX export", "onnx", "onnxscript")
    import onnx

    profile = profile or ShapeProfile()
    path = Path(path)
    denoiser = get_denoiser(loaded.model)
    if denoiser.dtype != torch.float32:
        raise ValueError(f"ONNX export needs a float32 denoiser, this one is {denoiser.dtype}; load the model "
                         f"in float32 (TensorRT lowers precision itself, from the fp32 graph)")
    example = capture_denoiser_inputs(loaded, profile.example_batch)
    names = tuple(name for name in INPUT_NAMES if name in example)
    dynamic_shapes = None
    if not profile.is_static:
        batch = torch.export.Dim("batch", min=profile.min_batch, max=profile.max_batch)
        dynamic_shapes = {name: {0: batch} for name in names}
    weight_bytes = sum(t.numel() * t.element_size() for t in (*denoiser.parameters(), *denoiser.buffers()))
    start = time.monotonic()
    with torch.no_grad():
        program = torch.onnx.export(DenoiserGraph(denoiser).eval(), tuple(example[n] for n in names), dynamo=True,
                                    input_names=list(names), output_names=[OUTPUT_NAME], opset_version=OPSET,
                                    dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    external = _save_checked(program, path, weight_bytes > EXTERNAL_DATA_BYTES)
    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    if tuple(shapes) != names or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise RuntimeError(f"the exported graph has inputs {list(shapes)} and outputs "
                           f"{[o.name for o in graph.output]}; expected {list(names)} -> {OUTPUT_NAME}")
    logger.info("exported the %s denoiser to %s (%s) in %.1f s", loaded.model.arch, path, profile.describe(),
                time.monotonic() - start)
    return OnnxExport(path=path, input_names=names, input_shapes=shapes, output_name=OUTPUT_NAME, opset=OPSET,
                      checkpoint_sha256=checkpoint_sha256(loaded.path), profile=profile,
                      video={k: loaded.video[k] for k in ("frames", "height", "width")}, external_data=external)


def _save_checked(program, path: Path, external_data: bool) -> bool:
    """Save into a staging folder beside ``path``, check, then move the files into place, the graph
    last, so a reader never finds a graph whose weights are missing; returns whether weights went
    to an external-data file. A failure leaves nothing behind."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        program.save(str(staging / path.name), external_data=external_data)
        onnx.checker.check_model(str(staging / path.name))  # by path: works past the 2 GiB protobuf limit
        files = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
        for staged in files:
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, path.parent / staged.name)
        return len(files) > 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class Parity:
    max_abs: float
    #: max |onnx - eager| / max |eager|
    max_rel: float


@torch.no_grad()
def check_parity(loaded: LoadedModel, onnx_path: str | Path, batch: int = 1) -> Parity:
    """Run the graph in onnxruntime (CPU) and the eager denoiser on the same real inputs."""
    inputs = capture_denoiser_inputs(loaded, batch)
    eager = get_denoiser(loaded.model)(**inputs, return_dict=False)[0].float().cpu()
    session = cpu_session(onnx_path)
    feeds = {i.name: inputs[i.name].detach().float().cpu().numpy() for i in session.get_inputs()}
    result = torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])
    max_abs = float((result - eager).abs().max())
    return Parity(max_abs=max_abs, max_rel=max_abs / max(float(eager.abs().max()), 1e-12))


def cache_key(loaded: LoadedModel, profile: ShapeProfile) -> dict:
    """Everything an exported graph depends on: change any of it and the cache exports again."""
    import onnxscript

    return {"checkpoint_sha256": checkpoint_sha256(loaded.path), "arch": loaded.model.arch,
            "profile": asdict(profile), "video": {k: loaded.video[k] for k in ("frames", "height", "width")},
            "torch": torch.__version__, "onnxscript": onnxscript.__version__, "opset": OPSET,
            "export_format": EXPORT_FORMAT}


def onnx_dir(models_dir: str | Path | None = None) -> Path:
    """``<models_dir>/onnx/pvtt``: one export folder shared by the ONNX Runtime and TensorRT paths, so a
    large model's graph exists once (scripts default to ``models/``, beside ``models/pvtt``)."""
    default = train_module("paths").DEFAULT_MODELS_DIR.parent
    return Path(models_dir if models_dir is not None else default) / "onnx" / "pvtt"


def cached_export_path(loaded: LoadedModel, cache_dir: str | Path, profile: ShapeProfile) -> Path:
    """``<checkpoint>-<profile tag>-<key hash>.onnx`` in ``cache_dir``."""
    key = hashlib.sha256(json.dumps(cache_key(loaded, profile), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{checkpoint_label(loaded.path)}-{profile.tag(loaded.video)}-{key}.onnx"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def cached_export(loaded: LoadedModel, cache_dir: str | Path, profile: ShapeProfile | None = None) -> OnnxExport:
    """The exported graph for ``loaded`` and ``profile``, reused from ``cache_dir`` when its sidecar
    matches; otherwise exported now (graph first, then the sidecar that marks it complete)."""
    profile = profile or ShapeProfile()
    path = cached_export_path(loaded, cache_dir, profile)
    key = cache_key(loaded, profile)
    sidecar = sidecar_path(path)
    if path.is_file() and sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
            if record.get("key") == key:
                logger.info("reusing the exported graph %s", path)
                return OnnxExport.from_dict({**record["export"], "path": str(path)})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            logger.warning("ignoring the unreadable sidecar %s (%s); exporting again", sidecar, exc)
    start = time.monotonic()
    export = export_denoiser_onnx(loaded, path, profile)
    record = {"key": key, "export": export.to_dict(), "onnx_sha256": onnx_sha256(path),
              "checkpoint": str(loaded.path), "export_seconds": round(time.monotonic() - start, 2)}
    write_atomic(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True)))
    return export
