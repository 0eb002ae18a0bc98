"""PVTT Accelerate: the same model, faster (attention kernel, precision, INT8, token merging, compile).

The node returns a new PVTT_MODEL; the loader's cached model is left untouched. Compilation and
INT8 calibration happen here, in one warm-up sample on a synthetic clip at the checkpoint's size,
so the first Template Transfer run is not the one that pays for them.
"""

from __future__ import annotations

import logging
import time

from .runtime import check_interrupted, progress_bar

log = logging.getLogger("[PVTT]")

ATTENTION = ["auto", "sdpa", "decomposed", "sdpa_flash", "flash", "flash3", "sage", "math"]
PRECISION = ["fp32", "bf16", "fp16"]
COMPILE = ["off", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
INT8 = ["off", "w8a16", "w8a8"]


class PVTTAccelerate:
    DESCRIPTION = ("Speeds up a PVTT model: picks the attention kernel, the compute precision, optional INT8 "
                   "weights, token merging and torch.compile. bf16 and compile change the output by rounding only "
                   "(about 63 dB PSNR); INT8 and token merging approximate more. On a CPU, bf16 + compile 'default' "
                   "samples the 4-step student about 2.5x faster; on a GPU, bf16 with 'auto' attention uses "
                   "FlashAttention. The node compiles in a warm-up run (10-60 s), so the first transfer is fast.")
    CATEGORY = "PVTT/acceleration"
    FUNCTION = "accelerate"
    RETURN_TYPES = ("PVTT_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The accelerated model; connect it to PVTT Template Transfer in place of the loader's.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("PVTT_MODEL", {"tooltip": "The model from PVTT Load Model."}),
            "attention": (ATTENTION, {"default": "auto", "tooltip":
                "Attention kernel. auto: the fastest that runs here (FlashAttention on NVIDIA GPUs when "
                "installed, PyTorch SDPA or PVTT's decomposed kernel on CPU). A kernel that cannot run here "
                "falls back to sdpa with a warning that says what to install."}),
            "precision": (PRECISION, {"default": "bf16", "tooltip":
                "Compute precision of the transformer. bf16 halves memory and is faster on GPUs and on CPUs "
                "with AVX512-BF16; outputs differ from fp32 by rounding only (about 60 dB PSNR). fp16 is for "
                "older GPUs."}),
            "compile": (COMPILE, {"default": "off", "tooltip":
                "torch.compile the transformer. Costs 10-60 s once, then each step is faster. 'default' is the "
                "recommended choice; max-autotune-no-cudagraphs also tunes GEMM kernels (longer compile); "
                "max-autotune and reduce-overhead add CUDA graphs on a GPU (on a CPU they act as the modes "
                "without them)."}),
            "int8": (INT8, {"default": "off", "tooltip":
                "INT8 quantisation with torchao. w8a16: INT8 weights (less memory). w8a8: INT8 weights and "
                "activations with SmoothQuant calibration (fastest on GPUs with INT8 tensor cores). Slightly "
                "changes the output."}),
            "token_merging": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.5, "step": 0.05, "tooltip":
                "Fraction of self-attention keys merged with similar ones (ToMe). Faster attention on long "
                "videos at some quality cost; 0 = exact."}),
        }}

    def accelerate(self, model, attention, precision, compile, int8, token_merging):
        from ..pvtt_accel.accelerate import (
            AccelerationOptions,
            accelerate,
            sample_synthetic,
        )

        options = AccelerationOptions(attention=attention, precision=precision, compile=compile, int8=int8,
                                      tome_ratio=token_merging)
        steps = model.sampler["steps"]
        bar = progress_bar(steps + 1)
        started = time.perf_counter()
        fast = accelerate(model, options)
        bar.update_absolute(1, steps + 1)
        check_interrupted()

        def on_step(i, total, _x0):
            check_interrupted()
            bar.update_absolute(1 + i, 1 + total)

        sample_synthetic(fast, 1, callback=on_step)  # warm-up: compile at the exact shapes Template Transfer uses
        record = fast.metadata["acceleration"]
        log.info("accelerated %s: %s (attention %s: %s) in %.1f s", model.path.name, options.label(),
                 record["attention_used"], record["attention_reason"], time.perf_counter() - started)
        return (fast,)
