"""PVTT Accelerate: the same model, faster (attention kernel, precision, INT8, token merging, compile).

The node returns a new PVTT_MODEL; the loader's cached model is left untouched. Compilation and
INT8 calibration happen here, in one warm-up sample on a synthetic clip at the checkpoint's size,
so the first Template Transfer run is not the one that pays for them.

``auto`` (the default of precision, compile and int8) measures instead of assuming: which variant is
fast depends on the machine (bf16 is several times faster than fp32 on a CPU with AVX512-BF16 or AMX
and many times slower on an AVX2-only one), so ``pvtt_accel.auto_select`` times the candidates that
can win here against the eager model and keeps the fastest that stays within 35 dB PSNR of it, or
eager. ``auto`` is a new value of the existing dropdowns (saved as its name, like every combo value):
widget order and ids are unchanged, so saved workflows load with their saved, explicit values.
"""

from __future__ import annotations

import logging
import time

from .runtime import check_interrupted, progress_bar

log = logging.getLogger("[PVTT]")

ATTENTION = ["auto", "sdpa", "decomposed", "sdpa_flash", "flash", "flash3", "sage", "math"]
PRECISION = ["auto", "fp32", "bf16", "fp16"]
COMPILE = ["auto", "off", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
INT8 = ["auto", "off", "w8a16", "w8a8"]


class PVTTAccelerate:
    DESCRIPTION = ("Speeds up a PVTT model: attention kernel, compute precision, optional INT8 weights, token "
                   "merging and torch.compile. With 'auto' (the default) it measures the variants that can be fast "
                   "on this machine against the plain model for a few steps and keeps the fastest whose output "
                   "stays within 35 dB PSNR, or the plain model when none is faster; the choice is remembered "
                   "for this machine, model and size, and shown in the report output. Which variant wins depends "
                   "on the hardware: bf16 is fast on NVIDIA GPUs and on CPUs with AVX512-BF16 or AMX, and many "
                   "times slower on other CPUs. The first run measures and compiles (up to a few minutes); later "
                   "runs reuse the choice.")
    CATEGORY = "PVTT/acceleration"
    FUNCTION = "accelerate"
    RETURN_TYPES = ("PVTT_MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("The accelerated model; connect it to PVTT Template Transfer in place of the loader's.",
                       ("What runs and why: auto's choice with its measured speed-up over the plain model, and any "
                        "warning that an explicit setting is slow on this machine (connect it to a text preview)."))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("PVTT_MODEL", {"tooltip": "The model from PVTT Load Model."}),
            "attention": (ATTENTION, {"default": "auto", "tooltip":
                "Attention kernel. auto: the fastest that runs here (FlashAttention on NVIDIA GPUs when "
                "installed, PyTorch SDPA or PVTT's decomposed kernel on CPU). A kernel that cannot run here "
                "falls back to sdpa with a warning that says what to install."}),
            "precision": (PRECISION, {"default": "auto", "tooltip":
                "Compute precision of the transformer. auto: measured on this machine (bf16 or fp16 only when it "
                "is faster here). bf16 halves memory and is faster on NVIDIA GPUs since Ampere and on CPUs with "
                "AVX512-BF16 or AMX; on other CPUs it is emulated and many times slower (the node warns). "
                "Outputs differ from fp32 by rounding only (about 60 dB PSNR). fp16 is for older GPUs."}),
            "compile": (COMPILE, {"default": "auto", "tooltip":
                "torch.compile the transformer. auto: used when it measures faster here. Costs 10-60 s once, "
                "then each step is usually faster; on a CPU it needs a C++ compiler. max-autotune-no-cudagraphs "
                "also tunes GEMM kernels (longer compile); max-autotune and reduce-overhead add CUDA graphs on "
                "a GPU (on a CPU they act as the modes without them)."}),
            "int8": (INT8, {"default": "auto", "tooltip":
                "INT8 quantisation with torchao. auto: W8A8 is tried only where it can be fast (GPUs, CPUs with "
                "VNNI) and kept only when it measures faster within 35 dB PSNR. w8a16: INT8 weights (less "
                "memory, not faster). w8a8: INT8 weights and activations with SmoothQuant calibration; slow on "
                "CPUs without VNNI. Slightly changes the output."}),
            "token_merging": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.5, "step": 0.05, "tooltip":
                "Fraction of self-attention keys merged with similar ones (ToMe). Faster attention on long "
                "videos at some quality cost; 0 = exact."}),
        }}

    def accelerate(self, model, attention, precision, compile, int8, token_merging):
        from ..pvtt_accel.auto_candidates import is_auto, known_slow
        from ..pvtt_accel.machine import probe

        from .managed_models import load_for_sampling

        load_for_sampling(model)  # on ComfyUI's device, through its model management
        request = {"precision": precision, "compile": compile, "int8": int8}
        profile = probe()
        started = time.perf_counter()
        if is_auto(request):
            fast, report = self._auto(model, request, attention, token_merging, profile)
        else:
            from ..pvtt_accel.accelerate import AccelerationOptions

            options = AccelerationOptions(attention=attention, precision=precision, compile=compile, int8=int8,
                                          tome_ratio=token_merging)
            slow = known_slow(options, profile, next(model.model.parameters()).device)
            for warning in slow:  # before the warm-up, which is where a slow choice first costs time
                log.warning("PVTT Accelerate: %s", warning)
            fast = self._explicit(model, options)
            report = "\n".join([f"explicit {options.label()} (not measured)", *(f"WARNING: {w}" for w in slow)])
        log.info("accelerated %s in %.1f s: %s", model.path.name, time.perf_counter() - started, report)
        return {"ui": {"text": [report]}, "result": (fast, report)}

    def _auto(self, model, request, attention, token_merging, profile):
        from ..pvtt_accel.auto_cache import FOLDER
        from ..pvtt_accel.auto_select import auto_accelerate
        from ..pvtt_accel.onnx_export import onnx_dir
        from . import paths

        bar = progress_bar(100)

        def on_candidate(done, total, _name):
            check_interrupted()
            bar.update_absolute(int(100 * done / max(total, 1)), 100)

        result = auto_accelerate(model, request, attention=attention, tome_ratio=token_merging,
                                 cache_dir=paths.models_root() / FOLDER, ort_dir=onnx_dir(paths.models_root()),
                                 profile=profile, on_candidate=on_candidate)
        bar.update_absolute(100, 100)
        for warning in result.warnings:
            log.warning("PVTT Accelerate: %s", warning)
        return result.model, result.message()

    def _explicit(self, model, options):
        from ..pvtt_accel.accelerate import accelerate, sample_synthetic

        steps = model.sampler["steps"]
        bar = progress_bar(steps + 1)
        fast = accelerate(model, options)
        bar.update_absolute(1, steps + 1)
        check_interrupted()

        def on_step(i, total, _x0):
            check_interrupted()
            bar.update_absolute(1 + i, 1 + total)

        sample_synthetic(fast, 1, callback=on_step)  # warm-up: compile at the exact shapes Template Transfer uses
        record = fast.metadata["acceleration"]
        log.info("%s: attention %s (%s)", options.label(), record["attention_used"], record["attention_reason"])
        return fast

