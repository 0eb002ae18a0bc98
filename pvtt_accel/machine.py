"""What this machine can run fast: CPU instruction sets, CUDA devices, and which optional packages exist.

Which acceleration pays off depends on the hardware, not on the model: bf16 is ~4x faster than fp32
on a CPU with AVX512-BF16 or AMX and ~14x *slower* on an AVX2-only CPU (measured on the 4-step
student, issue 17); INT8 activations need VNNI. ``probe()`` collects the facts the ``auto`` selector
and the bench header need. It imports no optional package: packages are found with
``importlib.util.find_spec`` (which reads no module code), so probing inside ComfyUI costs
milliseconds and cannot fail because, say, tensorrt is broken. Every torch query is guarded, since
the private ``torch.cpu._is_*`` helpers and ``torch.ops.mkldnn`` differ between torch builds.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

#: Optional packages an acceleration path needs (import name -> what it enables).
OPTIONAL_PACKAGES = {
    "torchao": "INT8 quantisation",
    "onnx": "ONNX export",
    "onnxscript": "ONNX export (dynamo exporter)",
    "onnxruntime": "ONNX Runtime backend",
    "tensorrt": "TensorRT engines",
    "flash_attn": "FlashAttention kernels",
}
#: C/C++ compilers torch.compile's CPU backend (inductor) can call.
CXX_COMPILERS = ("g++", "clang++", "c++", "cl")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile", "amx_int8")


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    capability: tuple[int, int]
    free_mb: int
    total_mb: int

    @property
    def bf16(self) -> bool:
        """Native bf16 tensor cores start with Ampere (compute capability 8.0)."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class MachineProfile:
    """The facts, as plain values (JSON-able with ``to_dict``)."""

    cpu_model: str
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    cpu_bf16: bool  # oneDNN runs bf16 natively (AVX512-BF16 or AMX)
    cpu_amx: bool
    cpu_vnni: bool  # INT8 dot products (AVX512-VNNI or AVX-VNNI)
    cpu_flags: tuple[str, ...]
    cxx_compiler: str | None  # what torch.compile on CPU would use; None: compile cannot work
    threads: int
    cuda: tuple[CudaDevice, ...] = ()
    packages: dict[str, bool] = field(default_factory=dict)

    def capability_string(self) -> str:
        """A short, stable description of the hardware for cache keys: change the CPU features, the
        GPU or the thread count and every measured choice is measured again."""
        cpu = f"{self.cpu_capability}{'+bf16' if self.cpu_bf16 else ''}{'+amx' if self.cpu_amx else ''}" \
              f"{'+vnni' if self.cpu_vnni else ''}"
        gpus = ",".join(f"{d.name}/sm{d.capability[0]}{d.capability[1]}" for d in self.cuda)
        return f"{self.cpu_model} | {cpu} | {self.threads} threads" + (f" | {gpus}" if gpus else "")

    def summary(self) -> str:
        """One line for logs and the bench header."""
        native = "native bf16 (oneDNN)" if self.cpu_bf16 else "no native bf16 (bf16 is emulated: slow)"
        extras = [name for name, ok in sorted(self.packages.items()) if ok]
        gpus = "; ".join(f"cuda:{d.index} {d.name} sm{d.capability[0]}{d.capability[1]}, {d.free_mb} MB free"
                         for d in self.cuda) or "no CUDA GPU"
        return (f"CPU {self.cpu_model}: {self.cpu_capability}, {native}, VNNI {'yes' if self.cpu_vnni else 'no'}, "
                f"AMX {'yes' if self.cpu_amx else 'no'}, {self.threads} torch threads, C++ compiler "
                f"{self.cxx_compiler or 'none'}; {gpus}; optional packages: {', '.join(extras) or 'none'}")

    def to_dict(self) -> dict:
        return asdict(self)


def _guarded(query, default):
    """``query()``, or ``default`` where this torch build lacks it or it fails."""
    try:
        return query()
    except Exception:  # noqa: BLE001 - private torch helpers: missing or raising on some builds and platforms
        return default


def cpu_flags() -> tuple[str, ...]:
    """The relevant ISA flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    match = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    present = set(match.group(1).split()) if match else set()
    return tuple(f for f in _CPU_FLAGS if f in present)


def cpu_model() -> str:
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine() or "unknown CPU")


def package_available(name: str) -> bool:
    """Whether ``name`` can be found, without importing it (a broken entry counts as absent)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, or sys.modules[name] set to None
        return False


def cuda_devices() -> tuple[CudaDevice, ...]:
    if not _guarded(torch.cuda.is_available, False):
        return ()
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = _guarded(lambda i=index: torch.cuda.mem_get_info(i), (0, 0))
        devices.append(CudaDevice(index, torch.cuda.get_device_name(index),
                                  tuple(torch.cuda.get_device_capability(index)), free // 2**20, total // 2**20))
    return tuple(devices)


def probe() -> MachineProfile:
    """The machine as it is now (CUDA free memory changes: call again rather than keep it)."""
    flags = cpu_flags()
    cpu = _guarded(lambda: torch.cpu, None)
    bf16 = bool(_guarded(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported(), False)
                or _guarded(lambda: cpu._is_avx512_bf16_supported(), False))
    amx = bool(_guarded(lambda: cpu._is_amx_tile_supported(), False)) or "amx_tile" in flags
    vnni = bool(_guarded(lambda: cpu._is_vnni_supported(), False)) or bool({"avx512_vnni", "avx_vnni"} & set(flags))
    return MachineProfile(
        cpu_model=cpu_model(), cpu_capability=_guarded(torch.backends.cpu.get_cpu_capability, "unknown"),
        cpu_bf16=bf16, cpu_amx=amx, cpu_vnni=vnni, cpu_flags=flags, cxx_compiler=cxx_compiler(),
        threads=torch.get_num_threads(), cuda=cuda_devices(),
        packages={name: package_available(name) for name in OPTIONAL_PACKAGES})


def cxx_compiler() -> str | None:
    """The first C++ compiler on PATH, or None."""
    return next((name for name in CXX_COMPILERS if shutil.which(name)), None)
