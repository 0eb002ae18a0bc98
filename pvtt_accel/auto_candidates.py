"""Which acceleration variants are worth timing on this machine, and which explicit choices are known slow.

The ``auto`` selector (``auto_select``) times only variants that can win here, so its first run stays
short: bf16 on a CPU only with native bf16 (AVX512-BF16 or AMX; emulated bf16 measured 14x slower
than fp32 on an AVX2 EPYC), INT8 activations on a CPU only with VNNI (0.15x eager without it),
compiled variants only where a C++ compiler exists, ONNX Runtime only where it is installed. A
setting the user chose explicitly is always honoured; ``known_slow`` says why it may be slow here,
so the node can warn instead of running it silently.

A request is one value per PVTT Accelerate widget (``precision``, ``compile``, ``int8``); ``auto``
lets the selector choose that part, any other value fixes it for every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .accelerate import AccelerationOptions
from .machine import MachineProfile

AUTO = "auto"
#: Widgets the selector may choose, with the value that means "not used".
CHOOSABLE = {"precision": "fp32", "compile": "off", "int8": "off"}
ORT_PACKAGES = ("onnxruntime", "onnx", "onnxscript")


@dataclass(frozen=True)
class Candidate:
    """A variant to time: PyTorch ``options``, or the ONNX Runtime backend (``runtime="onnxruntime"``)."""

    name: str
    options: AccelerationOptions
    runtime: str = "pytorch"

    def to_dict(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "precision": self.options.precision,
                "compile": self.options.compile, "int8": self.options.int8, "attention": self.options.attention,
                "tome_ratio": self.options.tome_ratio}


def _torch(options: AccelerationOptions) -> Candidate:
    return Candidate(options.label(), options)


def base_options(request: dict[str, str], attention: str = "auto", tome_ratio: float = 0.0) -> AccelerationOptions:
    """The explicit parts of ``request`` with every ``auto`` part switched off: what runs when no
    candidate beats eager (plain eager when everything is ``auto``)."""
    fixed = {k: off if request.get(k, AUTO) == AUTO else request[k] for k, off in CHOOSABLE.items()}
    return AccelerationOptions(attention=attention, tome_ratio=tome_ratio, **fixed)


def is_auto(request: dict[str, str]) -> bool:
    return any(request.get(k, AUTO) == AUTO for k in CHOOSABLE)


def _hardware_options(profile: MachineProfile, device: torch.device, request: dict[str, str]) -> list[dict]:
    """The settings worth trying on this hardware (before the request narrows them)."""
    compiles = ["off", "default"] if (device.type == "cuda" or profile.cxx_compiler) else ["off"]
    if device.type == "cuda":
        gpu = next((d for d in profile.cuda if d.index == (device.index or 0)), None)
        precisions = ["bf16"] if gpu is None or gpu.bf16 else ["fp16"]
        int8 = ["w8a8"] if profile.packages.get("torchao") else []
        options = [{"precision": p, "compile": c, "int8": "off"} for p in ["fp32", *precisions] for c in compiles]
        if "default" in compiles:
            options += [{"precision": precisions[0], "compile": "default", "int8": mode} for mode in int8]
        return options
    precisions = ["fp32", "bf16"] if profile.cpu_bf16 or request.get("precision") == "bf16" else ["fp32"]
    options = [{"precision": p, "compile": c, "int8": "off"} for p in precisions for c in compiles]
    int8_fast = profile.cpu_vnni or request.get("int8") == "w8a8"
    if profile.packages.get("torchao") and "default" in compiles and int8_fast:
        options.append({"precision": "fp32", "compile": "default", "int8": "w8a8"})  # W8A8 alone: 0.70x on bf16 CPUs
    return options


def candidates(profile: MachineProfile, device: torch.device, request: dict[str, str], attention: str = "auto",
               tome_ratio: float = 0.0, ort: bool = False) -> list[Candidate]:
    """The variants to time against eager for ``request``: the base (``base_options``) first when it
    is not eager, then every hardware option that agrees with the request's explicit parts.
    ``ort``: also try ONNX Runtime (CPU, only when nothing is fixed and the packages exist)."""
    base = base_options(request, attention, tome_ratio)
    eager = AccelerationOptions(attention=attention, tome_ratio=tome_ratio)
    found = [] if base == eager else [_torch(base)]
    for option in _hardware_options(profile, device, request):
        if all(request.get(k, AUTO) in (AUTO, v) for k, v in option.items()):
            made = _torch(replace(eager, **option))
            if made.options != eager and made not in found:
                found.append(made)
    everything_auto = all(request.get(k, AUTO) == AUTO for k in CHOOSABLE)
    if (ort and device.type == "cpu" and everything_auto and attention == "auto" and not tome_ratio
            and all(profile.packages.get(p) for p in ORT_PACKAGES)):
        found.append(Candidate("onnxruntime", eager, runtime="onnxruntime"))
    return found


def known_slow(options: AccelerationOptions, profile: MachineProfile, device: torch.device) -> list[str]:
    """Why ``options`` is expected to be slower than eager here (empty: no known reason)."""
    if device.type != "cpu":
        gpu = next((d for d in profile.cuda if d.index == (device.index or 0)), None)
        if options.precision == "bf16" and gpu is not None and not gpu.bf16:
            return [(f"bf16 on {gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]}, before "
                     f"Ampere) has no bf16 tensor cores; fp16 is the fast half precision there")]
        return []
    reasons = []
    cpu = f"this CPU ({profile.cpu_model}, {profile.cpu_capability})"
    if options.precision == "bf16" and not profile.cpu_bf16:
        reasons.append(f"bf16 on {cpu} is emulated (no AVX512-BF16 or AMX): measured 14x slower than fp32 on "
                       f"such a CPU; use precision auto or fp32")
    if options.precision == "fp16":
        reasons.append(f"fp16 on a CPU is emulated on most CPUs (only AMX-FP16 runs it natively); use precision "
                       f"auto or fp32 on {cpu}")
    if options.int8 == "w8a8" and not profile.cpu_vnni:
        reasons.append(f"INT8 activations on {cpu} without VNNI measured 0.15x eager; use int8 auto or off")
    if options.compile != "off" and not profile.cxx_compiler:
        reasons.append("torch.compile on a CPU needs a C++ compiler (g++ or clang; MSVC on Windows) and none is on "
                       "PATH: it will fail; use compile auto or off")
    return reasons
