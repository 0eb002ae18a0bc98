"""TensorRT engines for the denoiser: built from the exported ONNX graph, cached, run on torch CUDA tensors.

An engine only runs on the TensorRT version and GPU architecture it was built with, for the
precision and input shapes it was built for, so each of those is in its file name and in a JSON
sidecar beside it (``<ComfyUI models>/tensorrt/pvtt/``)::

    pvtt_student_4step-1de7976c9041-fp16-static-1x9x16x16-trt10.13.3.9-sm90.engine
    pvtt_student_4step-1de7976c9041-fp16-static-1x9x16x16-trt10.13.3.9-sm90.engine.json

``find_or_build_engine`` reuses a cached engine whose sidecar matches the running setup and builds
one otherwise (saying why in the log). Files are written atomically and only after a complete build,
so a failed or cancelled build leaves nothing behind. Builds share a timing cache per TensorRT
version and GPU, which makes rebuilds (another precision or profile) much faster.

Written against the TensorRT 10 Python API: a weakly typed network whose precision comes from
``BuilderFlag.FP16/BF16/INT8/FP8``. TensorRT 11 removed those flags (strong typing only), so a
TensorRT other than 10.x is refused with the same clear error as a missing one. INT8 and FP8 need
explicit quantisation (a Q/DQ graph, e.g. from NVIDIA ModelOpt, passed as ``onnx_path``): on PVTT's
float32 export TensorRT would quietly run those layers in fp16 under an ``int8`` name.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ._train import train_module
from .denoiser import LoadedModel, require_pytorch_denoiser, with_denoiser
from .onnx_export import (
    ShapeOutsideProfile,
    ShapeProfile,
    cached_export,
    checkpoint_label,
    checkpoint_sha256,
    denoiser_inputs,
    onnx_dir,
    onnx_sha256,
    shape_mismatch,
    sidecar_path,
)

write_atomic = train_module("models.checkpoint").write_atomic
DEFAULT_MODELS_DIR = train_module("paths").DEFAULT_MODELS_DIR
logger = logging.getLogger("PVTT")

#: progress(done, total): the build's progress in percent (total is 100), e.g. ComfyUI's ProgressBar.
Progress = Callable[[int, int], None]
#: cancelled() -> True to stop the build, e.g. ComfyUI's interrupt check (it may also raise).
Cancelled = Callable[[], bool]

#: precision -> BuilderFlag names; quantised layers fall back to fp16, not fp32.
PRECISION_FLAGS = {"fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16"), "fp8": ("FP8", "FP16")}
#: Oldest GPU architecture with the precision's tensor cores.
MIN_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}
QUANTIZED = ("int8", "fp8")
TENSORRT_MAJOR = 10
#: Version of PVTT's engine contract (inputs, sidecar fields); part of every engine's identity.
ENGINE_FORMAT = 1
INSTALL = ('pip install "tensorrt-cu12>=10,<11" (PyTorch built for CUDA 12) or "tensorrt-cu13>=10,<11" (CUDA 13), '
           'on a machine with an NVIDIA GPU and internet access (the wheels download NVIDIA\'s libraries)')
FALLBACK = "the ONNX Runtime backend (pvtt_accel.ort_backend.ort_accelerate, on the CPU) or the eager PyTorch model"


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot run here (no CUDA GPU, tensorrt missing or the wrong major version, or a
    precision this GPU lacks); the message says what is missing, how to install it and the fallback."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the graph or build or load the engine; nothing was written."""


class EngineBuildCancelled(RuntimeError):
    """The build was cancelled through ``cancelled()``; nothing was written."""


def require_tensorrt(device: torch.device | str | None = None):
    """The ``tensorrt`` module and the GPU's compute capability (``sm90``), or ``TensorRTUnavailable``
    listing everything that is missing at once."""
    problems = []
    if not torch.cuda.is_available():
        build = " (this PyTorch is a CPU-only build)" if torch.version.cuda is None else ""
        problems.append(f"no CUDA GPU is available to PyTorch{build}")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: installed, but NVIDIA's libraries do not load
        trt = None
        problems.append(f"the tensorrt package is not installed or does not load ({exc})")
    else:
        if not trt.__version__.startswith(f"{TENSORRT_MAJOR}."):
            problems.append(f"TensorRT {trt.__version__} is installed, but PVTT needs TensorRT {TENSORRT_MAJOR}.x "
                            f"(it sets precision with BuilderFlag.FP16/BF16/INT8/FP8, which TensorRT 11 removed)")
    if problems:
        raise TensorRTUnavailable(f"TensorRT cannot run here: {'; '.join(problems)}. To use it, install TensorRT "
                                  f"{TENSORRT_MAJOR}: {INSTALL}. Until then use {FALLBACK}.")
    major, minor = torch.cuda.get_device_capability(device)
    return trt, f"sm{major}{minor}"


def check_precision(precision: str, capability: str) -> None:
    """Refuse a precision this GPU (``sm86``, ``sm90``...) has no tensor cores for."""
    need = MIN_CAPABILITY.get(precision)
    have = (int(capability[2:-1]), int(capability[-1]))
    if need and have < need:
        raise TensorRTUnavailable(f"{precision} engines need a GPU of compute capability sm{need[0]}{need[1]} or "
                                  f"newer; this GPU is {capability}. Build an fp16 engine, or use {FALLBACK}.")


def has_qdq(onnx_path: str | Path) -> bool:
    """Whether a graph carries explicit quantisation (QuantizeLinear/DequantizeLinear, incl. TensorRT's FP8 ops)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any("QuantizeLinear" in node.op_type for node in graph.node)


def engine_dir(models_dir: str | Path | None = None) -> Path:
    """``<models_dir>/tensorrt/pvtt``; ComfyUI's node passes ``folder_paths.models_dir``, scripts
    default to ``models/`` (the parent of ``pvtt_train.paths.DEFAULT_MODELS_DIR``)."""
    return Path(models_dir if models_dir is not None else DEFAULT_MODELS_DIR.parent) / "tensorrt" / "pvtt"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine is specific to; two specs with the same identity share an engine."""

    checkpoint: str
    checkpoint_sha256: str
    precision: str
    profile: ShapeProfile
    video: dict
    tensorrt_version: str
    compute_capability: str
    #: sha256 of a graph given as ``onnx_path`` (a quantised export) instead of PVTT's own.
    custom_onnx_sha256: str | None = None

    @property
    def file_name(self) -> str:
        parts = [re.sub(r"[^A-Za-z0-9_.]+", "_", self.checkpoint), self.checkpoint_sha256[:12], self.precision]
        if self.custom_onnx_sha256:
            parts.append(f"onnx{self.custom_onnx_sha256[:8]}")
        parts += [self.profile.tag(self.video), f"trt{self.tensorrt_version}", self.compute_capability]
        return "-".join(parts) + ".engine"

    def identity(self) -> dict:
        return {"engine_format": ENGINE_FORMAT, "checkpoint_sha256": self.checkpoint_sha256,
                "precision": self.precision, "profile": asdict(self.profile), "video": dict(self.video),
                "tensorrt_version": self.tensorrt_version, "compute_capability": self.compute_capability,
                "custom_onnx_sha256": self.custom_onnx_sha256}

    def mismatches(self, record: dict) -> list[str]:
        """How a sidecar differs from this spec: ``tensorrt_version 10.8.0.43 (running 10.13.3.9)``..."""
        return [f"{key} {record.get(key)} (running {value})" for key, value in self.identity().items()
                if record.get(key) != value]


def read_sidecar(engine_path: Path) -> dict | None:
    try:
        record = json.loads(sidecar_path(engine_path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


class EngineCache:
    """Engines, their sidecars and the shared timing caches in one folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def engine_path(self, spec: EngineSpec) -> Path:
        return self.folder / spec.file_name

    def timing_cache_path(self, spec: EngineSpec) -> Path:
        return self.folder / f"timing-trt{spec.tensorrt_version}-{spec.compute_capability}.cache"

    def lookup(self, spec: EngineSpec) -> Path | None:
        """The cached engine for ``spec``, or None (with the reason in the log) if it must be built."""
        path = self.engine_path(spec)
        if not path.is_file():
            self._log_other_builds(spec)
            return None
        record = read_sidecar(path)
        if record is None:
            logger.warning("TensorRT engine %s has no readable sidecar (%s); rebuilding it", path.name,
                           sidecar_path(path).name)
            return None
        problems = spec.mismatches(record)
        if record.get("engine_bytes") != path.stat().st_size:
            problems.append(f"engine size {path.stat().st_size} bytes (sidecar says {record.get('engine_bytes')})")
        if problems:
            logger.warning("TensorRT engine %s does not match this setup: %s; rebuilding it", path.name,
                           "; ".join(problems))
            return None
        logger.info("reusing TensorRT engine %s", path)
        return path

    def _log_other_builds(self, spec: EngineSpec) -> None:
        """Say why engines of this checkpoint built elsewhere (other TensorRT or GPU) are not used."""
        for sidecar in sorted(self.folder.glob("*.engine.json")):
            record = read_sidecar(sidecar.with_suffix("")) or {}
            same_engine = all(record.get(k) == v for k, v in spec.identity().items()
                              if k not in ("tensorrt_version", "compute_capability"))
            if same_engine and record.get("engine") != spec.file_name:
                logger.info("%s was built for TensorRT %s on %s; an engine runs only on the TensorRT version and "
                            "GPU architecture it was built with, so one is built for TensorRT %s on %s",
                            record.get("engine"), record.get("tensorrt_version"), record.get("compute_capability"),
                            spec.tensorrt_version, spec.compute_capability)

    def store(self, spec: EngineSpec, engine, record: dict) -> Path:
        """Write the engine, then its sidecar (each atomically): a sidecar always describes a complete engine."""
        path = self.engine_path(spec)
        data = memoryview(engine)
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
        sidecar = {**record, **spec.identity(), "checkpoint": spec.checkpoint, "engine": path.name,
                   "engine_bytes": data.nbytes, "profile_tag": spec.profile.tag(spec.video)}
        write_atomic(sidecar_path(path), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2, sort_keys=True)))
        return path


def build_monitor(trt, progress: Progress | None = None, cancelled: Cancelled | None = None):
    """A ``trt.IProgressMonitor`` that reports the build in percent and stops it on request.

    TensorRT nests phases (parent phase name, number of steps); the percentage is that of the
    outermost active phase, refined by its active sub-phases. TensorRT calls the monitor from its
    own threads and cannot take a Python exception, so anything ``progress`` or ``cancelled``
    raises is kept, the build is stopped (``step_complete`` returns False) and the caller re-raises it.
    """

    class BuildMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, list] = {}  # name -> [parent, steps, steps done]
            self.lock = threading.Lock()
            self.percent = -1
            self.cancelled = False
            self.error: BaseException | None = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                self.phases[phase_name] = [parent_phase, max(int(num_steps), 1), 0]

        def phase_finish(self, phase_name):
            with self.lock:
                self.phases.pop(phase_name, None)

        def step_complete(self, phase_name, step):
            """Report progress and poll for cancellation; False stops the build."""
            with self.lock:
                if phase_name in self.phases:
                    self.phases[phase_name][2] = step + 1
                if self.error is None and not self.cancelled:
                    try:
                        self._report()
                        self.cancelled = bool(cancelled is not None and cancelled())
                    except BaseException as exc:  # noqa: BLE001 - must not cross into TensorRT; re-raised after
                        self.error = exc
                return self.error is None and not self.cancelled

        def _fraction(self, name: str) -> float:
            _parent, steps, done = self.phases[name]
            child = next((n for n, p in reversed(self.phases.items()) if p[0] == name), None)
            return min(1.0, (done + (self._fraction(child) if child else 0.0)) / steps)

        def _report(self) -> None:
            """The outermost active phase's share done, refined by its sub-phases; never backwards."""
            outer = [n for n, p in self.phases.items() if p[0] not in self.phases]
            percent = int(100 * self._fraction(outer[-1])) if outer else 0
            if percent > self.percent:
                self.percent = percent
                if progress is not None:
                    progress(percent, 100)

    return BuildMonitor()


def optimization_profile(builder, network, profile: ShapeProfile):
    """One optimisation profile: every input at min/opt/max batch, its other dims as the graph fixes them."""
    shapes = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(f"graph input {tensor.name} has shape {dims}; only the batch (first) dim may be "
                                   f"dynamic, frames and size follow the checkpoint")
        if dims[0] >= 0 and not profile.min_batch == profile.max_batch == dims[0]:
            raise EngineBuildError(f"graph input {tensor.name} has a fixed batch of {dims[0]}, which cannot serve "
                                   f"{profile.describe()}; export the graph for that profile")
        shapes.set_shape(tensor.name, *[(b, *dims[1:]) for b in (profile.min_batch, profile.opt_batch,
                                                                  profile.max_batch)])
    return shapes


def build_engine(trt, cache: EngineCache, spec: EngineSpec, onnx_path: Path, *, workspace_bytes: int | None = None,
                 progress: Progress | None = None, cancelled: Cancelled | None = None,
                 details: dict | None = None) -> Path:
    """Build ``spec``'s engine from ``onnx_path`` into ``cache``; files are written only after a
    complete build (engine, sidecar and the updated timing cache)."""
    start = time.monotonic()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is TensorRT 10's only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path, so external-data weights are found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}. Nothing was written; "
                               f"use {FALLBACK}.")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in PRECISION_FLAGS[spec.precision]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    config.add_optimization_profile(optimization_profile(builder, network, spec.profile))
    timing_path = cache.timing_cache_path(spec)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, False)  # keyed by TensorRT version and GPU, so a mismatch is an error
    monitor = build_monitor(trt, progress, cancelled)
    config.progress_monitor = monitor
    logger.info("building TensorRT engine %s from %s (minutes for a large model)", spec.file_name, onnx_path.name)
    serialized = builder.build_serialized_network(network, config)
    if monitor.error is not None:
        raise monitor.error
    if monitor.cancelled:
        raise EngineBuildCancelled(f"the TensorRT build of {spec.file_name} was cancelled; nothing was written")
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build {spec.file_name} from {onnx_path.name} (its log above says "
                               f"why); nothing was written. Until fixed use {FALLBACK}.")
    seconds = time.monotonic() - start
    path = cache.store(spec, serialized, {
        **(details or {}), "onnx": str(onnx_path), "onnx_sha256": onnx_sha256(onnx_path),
        "workspace_bytes": workspace_bytes, "build_seconds": round(seconds, 1),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_atomic(timing_path, lambda tmp: Path(tmp).write_bytes(memoryview(config.get_timing_cache().serialize())))
    if progress is not None:
        progress(100, 100)
    logger.info("built TensorRT engine %s in %.0f s", path, seconds)
    return path


def find_or_build_engine(loaded: LoadedModel, precision: str = "fp16", profile: ShapeProfile | None = None,
                         models_dir: str | Path | None = None, *, onnx_path: str | Path | None = None,
                         workspace_gb: float | None = None, progress: Progress | None = None,
                         cancelled: Cancelled | None = None, device: torch.device | str | None = None) -> Path:
    """The engine for ``loaded``'s denoiser at ``precision`` and ``profile`` on this GPU: reused from
    ``<models_dir>/tensorrt/pvtt`` when its sidecar matches, otherwise built (from PVTT's cached ONNX
    export, or from ``onnx_path``, which int8/fp8 need: a Q/DQ-quantised graph of this checkpoint).
    ``workspace_gb`` caps TensorRT's scratch memory (default: TensorRT's, the whole GPU)."""
    require_pytorch_denoiser(loaded, "A TensorRT build")
    profile = profile or ShapeProfile()
    if precision not in PRECISION_FLAGS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISION_FLAGS)}")
    if precision in QUANTIZED and (onnx_path is None or not has_qdq(onnx_path)):
        raise ValueError(f"{precision} engines need explicit quantisation: pass onnx_path, a graph of this checkpoint "
                         f"with QuantizeLinear/DequantizeLinear nodes (e.g. from NVIDIA ModelOpt). PVTT's own export is "
                         f"float32, on which TensorRT would run those layers in fp16; build an fp16 engine from it.")
    trt, capability = require_tensorrt(device)
    check_precision(precision, capability)
    folder = engine_dir(models_dir)
    spec = EngineSpec(checkpoint=checkpoint_label(loaded.path), checkpoint_sha256=checkpoint_sha256(loaded.path),
                      precision=precision, profile=profile,
                      video={k: loaded.video[k] for k in ("frames", "height", "width")},
                      tensorrt_version=trt.__version__, compute_capability=capability,
                      custom_onnx_sha256=onnx_sha256(onnx_path) if onnx_path is not None else None)
    cache = EngineCache(folder)
    found = cache.lookup(spec)
    if found is not None:
        return found
    graph = Path(onnx_path) if onnx_path is not None else cached_export(loaded, onnx_dir(models_dir), profile).path
    return build_engine(trt, cache, spec, graph, progress=progress, cancelled=cancelled,
                        workspace_bytes=int(workspace_gb * 2**30) if workspace_gb else None,
                        details={"checkpoint_path": str(loaded.path), "gpu": torch.cuda.get_device_name(device),
                                 "torch": torch.__version__})


def torch_dtypes(trt) -> dict:
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}


class TrtDenoiser(nn.Module):
    """Drop-in denoiser (same keywords, returns a 1-tuple) running a TensorRT engine on torch CUDA tensors.

    Inputs are bound by address and the engine is enqueued on PyTorch's current CUDA stream, so
    no copy or synchronisation is added around it. Shapes are checked against the engine's
    optimisation profile first, with the fallbacks in the error.
    """

    def __init__(self, engine_path: str | Path, device: torch.device | str | None = None):
        super().__init__()
        trt, _ = require_tensorrt(device)
        self.engine_path = Path(engine_path)
        self.device = torch.device(device or "cuda")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self._engine is None:
                raise EngineBuildError(f"TensorRT could not load {self.engine_path.name} (its log above says why); "
                                       f"delete it and its .json sidecar to rebuild it")
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        dtypes = torch_dtypes(trt)
        self._dtypes = {n: dtypes[self._engine.get_tensor_dtype(n)] for n in names}
        shapes = {n: [tuple(s) for s in self._engine.get_tensor_profile_shape(n, 0)] for n in self._inputs}
        self._bounds = {n: (low, high) for n, (low, _opt, high) in shapes.items()}
        self.profile = ShapeProfile(*(s[0] for s in shapes["hidden_states"]))

    @property
    def dtype(self) -> torch.dtype:
        return self._dtypes["hidden_states"]

    def forward(self, hidden_states, timestep, encoder_hidden_states, control_hidden_states=None,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        inputs = denoiser_inputs(hidden_states, timestep, encoder_hidden_states, control_hidden_states, return_dict)
        problem = shape_mismatch(inputs, self._bounds)
        if problem:
            raise ShapeOutsideProfile(
                f"TensorRT denoiser: {problem}. {self.engine_path.name} was built for {self.profile.describe()} at "
                f"the checkpoint's video size. Build an engine whose profile covers it, e.g. find_or_build_engine("
                f"loaded, profile=ShapeProfile.dynamic(min_batch=1, opt_batch=2, max_batch=4)), or use {FALLBACK}.")
        feeds = {n: inputs[n].to(self.device, self._dtypes[n]).contiguous() for n in self._inputs}
        for name, tensor in feeds.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        out = torch.empty(tuple(self._context.get_tensor_shape(self._output)), dtype=self._dtypes[self._output],
                          device=self.device)
        self._context.set_tensor_address(self._output, out.data_ptr())
        if not self._context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.engine_path.name} (its log above says why)")
        return (out.to(hidden_states.device),)


def tensorrt_accelerate(loaded: LoadedModel, precision: str = "fp16", profile: ShapeProfile | None = None,
                        models_dir: str | Path | None = None, *, onnx_path: str | Path | None = None,
                        workspace_gb: float | None = None, progress: Progress | None = None,
                        cancelled: Cancelled | None = None, device: torch.device | str | None = None) -> LoadedModel:
    """``loaded`` with its denoiser running as a TensorRT engine (found or built by ``find_or_build_engine``)."""
    profile = profile or ShapeProfile()
    path = find_or_build_engine(loaded, precision, profile, models_dir, onnx_path=onnx_path, workspace_gb=workspace_gb,
                                progress=progress, cancelled=cancelled, device=device)
    return with_denoiser(loaded, TrtDenoiser(path, device), {
        "backend": "tensorrt", "engine": str(path), "precision": precision, "profile": profile.tag(loaded.video)})
