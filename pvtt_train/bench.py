"""``python -m pvtt_train bench``: teacher and every student × every backend, side by side, one run.

Every variant samples the same clips with the same noise, one clip at a time (a designer's
case), after its own warm-up, in rounds that alternate with the eager baseline (eager, variant,
eager, variant, ...), so its speed-up is a ratio of medians taken over the same minutes (with the
range of the per-round ratios). For each it reports the median latency per clip, the build time
(acceleration plus warm-up runs, which include any compilation), the process's peak memory in one
round of the variant alone (CUDA: allocator peak; CPU: resident set, which includes everything the
process loaded before), model calls per clip,
the speed-up over the teacher (50 steps with CFG) and over the same student run eagerly, PSNR of
the decoded frames against that eager run, and product PSNR against the ground truth.

A backend that cannot run here (TensorRT without CUDA, INT8 without torchao, ...) is listed with
the reason instead of a number. ``auto`` is PVTT Accelerate's default: its build time includes its
own measurement of the candidates (``pvtt_accel.auto_select``), and its row shows what it chose.
The report starts with the machine (``pvtt_accel.machine``): CPU capability, native bf16, VNNI,
AMX, GPUs, because which variant is fast depends on it. Results go to ``bench.json``, ``bench.md``
and ``bench.png``.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .eval.metrics import product_psnr
from .models.checkpoint import LoadedModel, write_atomic
from .models.loading import load_model
from .sampling.samplers import sample_from_metadata

log = logging.getLogger(__name__)

_PACK = __package__.rpartition(".")[0]


def accel_module(name: str):
    """``pvtt_accel.<name>``, imported next to this package (see pvtt_accel/_train.py)."""
    return importlib.import_module(f"{_PACK}.pvtt_accel.{name}" if _PACK else f"pvtt_accel.{name}")


@dataclass(frozen=True)
class Variant:
    """A named way to run a checkpoint: ``build(loaded, cache_dir)`` returns the model to sample."""

    name: str
    build: Callable[[LoadedModel, Path], LoadedModel] = field(compare=False)
    description: str = ""


def _torch_variant(name: str, description: str, **options) -> Variant:
    def build(loaded: LoadedModel, _cache: Path) -> LoadedModel:
        acc = accel_module("accelerate")
        return acc.accelerate(loaded, acc.AccelerationOptions(**options))

    return Variant(name, build, description)


def _ort_variant() -> Variant:
    def build(loaded: LoadedModel, cache: Path) -> LoadedModel:
        return accel_module("ort_backend").ort_accelerate(loaded, accel_module("onnx_export").onnx_dir(cache))

    return Variant("onnxruntime", build, "ONNX (dynamo export) in ONNX Runtime, CPU execution provider")


def _auto_variant() -> Variant:
    def build(loaded: LoadedModel, cache: Path) -> LoadedModel:
        ort = accel_module("onnx_export").onnx_dir(cache)
        return accel_module("auto_select").auto_accelerate(loaded, {}, cache_dir=None, ort_dir=ort).model

    return Variant("auto", build, "PVTT Accelerate's default: the fastest variant measured here within 35 dB of "
                                  "eager, else eager (measured afresh; its build time includes the measuring)")


def _trt_variant(precision: str) -> Variant:
    def build(loaded: LoadedModel, cache: Path) -> LoadedModel:
        return accel_module("tensorrt_engine").tensorrt_accelerate(loaded, precision=precision, models_dir=cache)

    return Variant(f"tensorrt-{precision}", build, f"TensorRT engine, {precision}")


#: The benchmark's variants; ``eager`` is every student's baseline and must come first.
CPU_VARIANTS = (
    _torch_variant("eager", "PyTorch fp32, SDPA attention"),
    _torch_variant("bf16", "bf16 weights (fp32 norms/RoPE), decomposed attention", precision="bf16"),
    _torch_variant("compile", "torch.compile (inductor, weights frozen), fp32", compile="default"),
    _torch_variant("int8-w8a16", "torchao INT8 weight-only, fp32 activations", int8="w8a16"),
    _torch_variant("int8-w8a8", "torchao INT8 weights + dynamic INT8 activations, SmoothQuant", int8="w8a8"),
    _torch_variant("int8-w8a8+compile", "INT8 W8A8 SmoothQuant, compiled", int8="w8a8", compile="default"),
    _ort_variant(),
    _torch_variant("tome0.25", "token merging of 25% of self-attention keys/values, fp32", tome_ratio=0.25),
    _torch_variant("bf16+compile", "bf16 + decomposed attention + torch.compile", precision="bf16",
                   compile="default"),
    _torch_variant("bf16+compile-autotune", "bf16 + decomposed attention + torch.compile max-autotune "
                   "(no CUDA graphs)", precision="bf16", compile="max-autotune-no-cudagraphs"),
    _auto_variant(),
    _trt_variant("fp16"),
)
CUDA_VARIANTS = (
    _torch_variant("eager", "PyTorch fp32, SDPA attention"),
    _torch_variant("bf16", "bf16 weights, SDPA (PyTorch picks its kernel)", precision="bf16", attention="sdpa"),
    _torch_variant("bf16+sdpa_flash", "bf16, PyTorch SDPA restricted to FlashAttention-2", precision="bf16",
                   attention="sdpa_flash"),
    _torch_variant("bf16+flash-attn", "bf16, flash-attn package (FA2/FA3 by GPU)", precision="bf16", attention="auto"),
    _torch_variant("bf16+compile", "bf16 + SDPA-flash + torch.compile", precision="bf16", attention="sdpa_flash",
                   compile="default"),
    _torch_variant("bf16+int8-w8a16", "bf16 + torchao INT8 weight-only", precision="bf16", int8="w8a16"),
    _torch_variant("bf16+int8-w8a8+compile", "bf16 + INT8 W8A8 SmoothQuant + compile", precision="bf16",
                   int8="w8a8", compile="default"),
    _auto_variant(),
    _trt_variant("fp16"),
    _trt_variant("bf16"),
)
#: ``bench --quick``: the variants that matter for a designer's choice, on the 4-step student.
QUICK_VARIANTS = {"cpu": ("eager", "bf16", "compile", "onnxruntime", "auto"),
                  "cuda": ("eager", "bf16", "bf16+compile", "auto")}


def default_variants(device: torch.device) -> tuple[Variant, ...]:
    return CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS


def quick_variants(device: torch.device) -> tuple[Variant, ...]:
    wanted = QUICK_VARIANTS["cuda" if device.type == "cuda" else "cpu"]
    return tuple(v for v in default_variants(device) if v.name in wanted)


class CallCounter(nn.Module):
    """Counts model evaluations: a batched CFG call on 2B inputs counts as 2 per clip."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.evaluations = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(self, **inputs):
        self.evaluations += inputs["hidden_states"].shape[0]
        return self.inner(**inputs)


class PeakMemory:
    """Peak memory of a measured block: CUDA allocator peak, or the process's peak RSS on CPU
    (Linux resets VmHWM when "5" is written to /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """Samples the benchmark clips with one model and keeps its timings, outputs and call count."""

    def __init__(self, loaded: LoadedModel, clips: list[dict], seed: int):
        denoiser = accel_module("denoiser")
        self.counter = CallCounter(denoiser.get_denoiser(loaded.model))
        self.model = denoiser.with_denoiser(loaded, self.counter, {}).model
        self.metadata = loaded.metadata
        self.device = next(loaded.model.parameters()).device
        self.clips, self.seed = clips, seed
        self.times: list[float] = []
        self.outputs: list[torch.Tensor] = []
        self.first_call_s = 0.0

    @torch.no_grad()
    def sample(self, clip: dict) -> torch.Tensor:
        x0 = sample_from_metadata(self.model, clip["cond"], self.metadata, None,
                                  torch.Generator().manual_seed(self.seed))
        return self.model.decode(x0)

    def warm_up(self, runs: int) -> None:
        """Untimed runs; the first one's time (compilation, export, ...) is kept as ``first_call_s``."""
        started = time.perf_counter()
        self.sample(self.clips[0])
        _sync(self.device)
        self.first_call_s = time.perf_counter() - started
        for _ in range(max(runs - 1, 0)):
            self.sample(self.clips[0])
        self.counter.evaluations = 0

    def round(self, timed: bool = True) -> None:
        """Every clip once (timed unless ``timed`` is False); the first round's outputs are kept for the
        fidelity numbers."""
        for clip in self.clips:
            _sync(self.device)
            t0 = time.perf_counter()
            out = self.sample(clip)
            _sync(self.device)
            if timed:
                self.times.append(time.perf_counter() - t0)
            if len(self.outputs) < len(self.clips):
                self.outputs.append(out.float().cpu())

    def stats(self) -> dict:
        return {"latency_ms": 1000 * statistics.median(self.times), "latency_min_ms": 1000 * min(self.times),
                "first_call_s": self.first_call_s,
                "model_calls": self.counter.evaluations / len(self.times)}


def measure_against(baseline: Runner, runner: Runner, repeats: int, memory: PeakMemory) -> dict:
    """Time ``runner`` in rounds alternating with ``baseline`` (ABAB...), so drift of the machine hits
    both alike. Returns its statistics, the baseline's median over the same rounds
    (``eager_paired_ms``), the range of the per-round speed-ups, and the peak memory of one round of
    ``runner`` alone."""
    mark, clips = len(baseline.times), len(runner.clips)
    ratios = []
    for _ in range(repeats):
        if runner is not baseline:  # the baseline timed against itself runs once per round
            baseline.round()
        runner.round()
        ratios.append(statistics.median(baseline.times[-clips:]) / statistics.median(runner.times[-clips:]))
    stats = runner.stats()
    memory.reset()
    runner.round(timed=False)
    return {**stats, "peak_memory_mb": memory.peak_mb(),
            "eager_paired_ms": 1000 * statistics.median(baseline.times[mark:]),
            "speedup_round_min": min(ratios), "speedup_round_max": max(ratios)}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of frames in 0..1 (inf when identical)."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def prepare_clips(loaded: LoadedModel, count: int) -> list[dict]:
    """``count`` synthetic clips (kept apart from training, evaluation and calibration seeds), each
    with its condition built once, so conditioning cost is outside the timings."""
    denoiser = accel_module("denoiser")
    batch = denoiser.calibration_batch(loaded, count, offset=1000)
    device = next(loaded.model.parameters()).device
    clips = []
    for i in range(count):
        one = {k: v[i:i + 1].to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        clips.append({"cond": denoiser.condition_batch(loaded.model, one), "target": one["target"].cpu(),
                      "mask": one["mask"].cpu()})
    return clips


def _row(model_name: str, steps: int, variant: str, description: str) -> dict:
    return {"model": model_name, "steps": steps, "variant": variant, "description": description}


def run_bench(teacher_path: Path, student_paths: list[Path], variants: tuple[Variant, ...], out_dir: Path,
              clips: int = 4, repeats: int = 5, teacher_repeats: int = 1, warmup: int = 2, seed: int = 0,
              device: str = "cpu", progress: Callable[[str], None] = print) -> dict:
    """Measure everything in one process on the same clips; returns the report (also written)."""
    device = torch.device(device)
    machine = accel_module("machine").probe().summary()
    progress(f"machine: {machine}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "cache"
    teacher = load_model(teacher_path, device)
    inputs = prepare_clips(teacher, clips)
    memory = PeakMemory(device)
    rows = []

    def quality(outputs: list[torch.Tensor]) -> float:
        return statistics.mean(product_psnr(o, c["target"], c["mask"]) for o, c in zip(outputs, inputs))

    progress(f"teacher {teacher_path.name}: {teacher.sampler}")
    teacher_run = Runner(teacher, inputs, seed)
    teacher_run.warm_up(1)
    memory.reset()
    for _ in range(teacher_repeats):
        teacher_run.round()
    teacher_stats = teacher_run.stats()
    teacher_ms = teacher_stats["latency_ms"]
    rows.append({**_row(teacher_path.stem, teacher.sampler["steps"], "eager", "teacher, Euler + CFG"),
                 **teacher_stats, "peak_memory_mb": memory.peak_mb(), "product_psnr": quality(teacher_run.outputs),
                 "speedup_vs_teacher": 1.0})
    del teacher_run, teacher
    for path in student_paths:
        student = load_model(path, device)
        steps = student.sampler["steps"]
        eager = None
        for variant in variants:
            progress(f"{path.stem} × {variant.name}")
            row = _row(path.stem, steps, variant.name, variant.description)
            started = time.perf_counter()
            try:
                model = variant.build(student, cache)
                runner = Runner(model, inputs, seed)
                runner.warm_up(warmup)
            except Exception as exc:
                if eager is None:  # every speed-up and PSNR is against it: no baseline, no benchmark
                    raise RuntimeError(f"bench: the baseline {variant.name!r} of {path.name} failed: {exc}") from exc
                rows.append({**row, "skipped": f"{type(exc).__name__}: {exc}"})  # cannot run here: say why
                progress(f"  skipped: {exc}")
                continue
            build_s = time.perf_counter() - started
            if eager is None:  # the first variant is the baseline (timed against itself: speed-up 1)
                eager, eager_row = runner, row
            stats = measure_against(eager, runner, repeats, memory)
            acceleration = model.metadata.get("acceleration", {})
            row.update(stats, build_s=build_s, product_psnr=quality(runner.outputs),
                       attention=acceleration.get("attention_used"),
                       speedup_vs_teacher=teacher_ms / stats["latency_ms"],
                       speedup_vs_eager=stats["eager_paired_ms"] / stats["latency_ms"],
                       psnr_vs_eager=statistics.mean(psnr(o, b) for o, b in zip(runner.outputs, eager.outputs)))
            if "auto" in acceleration:
                row["auto_chose"] = acceleration["auto"]["chosen"]
                row["description"] += f"; chose {row['auto_chose']}"
            rows.append(row)
            progress(f"  {row['latency_ms']:.2f} ms/clip, ×{row['speedup_vs_eager']:.2f} vs eager in alternating "
                     f"rounds, {row['psnr_vs_eager']:.1f} dB vs eager")
        if eager is not None:  # its latency over every round it ran in
            overall = eager.stats()
            eager_row.update(latency_ms=overall["latency_ms"], latency_min_ms=overall["latency_min_ms"],
                             speedup_vs_teacher=teacher_ms / overall["latency_ms"])
    report = {"device": _device_name(device), "machine": machine, "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "clips": clips, "repeats": repeats, "seed": seed, "rows": rows, "best": best_rows(rows)}
    write_report(report, out_dir)
    return report



def best_rows(rows: list[dict], min_psnr: float = 35.0) -> dict:
    """Per student: the fastest variant whose output stays within ``min_psnr`` dB of eager."""
    best = {}
    for row in rows:
        if "speedup_vs_eager" not in row or row["psnr_vs_eager"] < min_psnr:
            continue
        if row["model"] not in best or row["speedup_vs_eager"] > best[row["model"]]["speedup_vs_eager"]:
            best[row["model"]] = {k: row[k] for k in ("variant", "latency_ms", "speedup_vs_eager", "psnr_vs_eager")}
    return best


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = None
    return f"CPU ({cpu.group(1).strip() if cpu else 'unknown'})"


COLUMNS = ("model", "steps", "variant", "attention", "ms / clip", "eager ms, same rounds", "× eager (round range)",
           "× teacher", "PSNR vs eager dB", "product PSNR dB", "build + warm-up s", "peak MB", "calls")


def markdown(report: dict) -> str:
    intro = (f"Device: {report['device']}, torch {report['torch']}, {report['threads']} threads; "
             f"{report['clips']} clips × {report['repeats']} rounds, one clip per call. × eager is the ratio of "
             f"medians over rounds alternating with the eager run; × teacher compares with the teacher's own "
             f"earlier rounds (not alternated). PSNR vs eager 'exact' = identical output.")
    lines = [f"Machine: {report.get('machine', 'not recorded')}", "", intro, "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in report["rows"]:
        if "skipped" in r:
            cells = [r["model"], str(r["steps"]), r["variant"], f"skipped: {r['skipped']}"]
            lines.append("| " + " | ".join(cells + [""] * (len(COLUMNS) - len(cells))) + " |")
            continue

        def fmt(key: str, spec: str, r: dict = r) -> str:
            value = r.get(key)
            if value is None:
                return "-"
            return "exact" if isinstance(value, float) and math.isinf(value) else format(value, spec)

        spread = (f" ({r['speedup_round_min']:.2f}-{r['speedup_round_max']:.2f})"
                  if r.get("speedup_round_min") is not None else "")
        variant = r["variant"] + (f" (chose {r['auto_chose']})" if r.get("auto_chose") else "")
        cells = [r["model"], str(r["steps"]), variant, r.get("attention") or "-", fmt("latency_ms", ".2f"),
                 fmt("eager_paired_ms", ".2f"), fmt("speedup_vs_eager", ".2f") + spread,
                 fmt("speedup_vs_teacher", ".1f"), fmt("psnr_vs_eager", ".1f"), fmt("product_psnr", ".2f"),
                 fmt("build_s", ".1f"), fmt("peak_memory_mb", ".0f"), fmt("model_calls", ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Largest speed-up over eager per student with PSNR vs eager ≥ 35 dB:", ""]
    lines += [f"- {m}: {b['variant']}, {b['latency_ms']:.2f} ms/clip, ×{b['speedup_vs_eager']:.2f} vs eager, "
              f"{b['psnr_vs_eager']:.1f} dB" for m, b in report["best"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    from .training_extra import require

    require("bench.png", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "latency_ms" in r]
    labels = [f"{r['model'].replace('pvtt_', '')} · {r['variant']}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.5))
    colours = {m: plt.cm.tab10(i) for i, m in enumerate(dict.fromkeys(r["model"] for r in rows))}
    ax.barh(range(len(rows)), [r["latency_ms"] for r in rows], color=[colours[r["model"]] for r in rows])
    for i, r in enumerate(rows):
        note = f" ×{r['speedup_vs_eager']:.2f}, {r['psnr_vs_eager']:.0f} dB" if "speedup_vs_eager" in r else " teacher"
        ax.text(r["latency_ms"], i, note, va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per clip (log); label: speed-up over the same student eager, PSNR vs eager")
    ax.set_title(f"PVTT sampling latency, {report['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def strict_json(value):
    """``value`` with infinities (PSNR of identical outputs) as null: strict JSON parsers reject Infinity."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    return None if isinstance(value, float) and math.isinf(value) else value


def write_report(report: dict, out_dir: Path) -> None:
    texts = {"bench.json": json.dumps(strict_json(report), indent=2, allow_nan=False), "bench.md": markdown(report)}
    for name, text in texts.items():
        write_atomic(out_dir / name, lambda tmp, text=text: Path(tmp).write_text(text))
    write_atomic(out_dir / "bench.png", lambda tmp: plot(report, Path(tmp)))


def attention_micro(layouts: list[tuple[int, int, int]], repeats: int = 10) -> list[dict]:
    """Attention alone, per call: PyTorch SDPA and PVTT's decomposed kernel in fp32 and bf16, and
    token merging at 0.25 and 0.5, for each (tokens, heads, head_dim) layout on random inputs.
    This is where docs/acceleration.md's kernel figures come from."""
    import torch.nn.functional as F

    attention = accel_module("wan_processor")
    tome = accel_module("tome")

    def timed(fn) -> float:
        fn()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1000 * (time.perf_counter() - started) / repeats

    rows = []
    for tokens, heads, dim in layouts:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, tokens, heads, dim, generator=g) for _ in range(3))
        row = {"tokens": tokens, "heads": heads, "head_dim": dim}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            qd, kd, vd = (t.to(dtype) for t in (q, k, v))
            row[f"sdpa_{name}_ms"] = timed(lambda qd=qd, kd=kd, vd=vd: F.scaled_dot_product_attention(
                qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2)))
            row[f"decomposed_{name}_ms"] = timed(lambda qd=qd, kd=kd, vd=vd: attention.decomposed_attention(qd, kd, vd))
        for ratio in (0.25, 0.5):
            row[f"tome{ratio}_fp32_ms"] = timed(lambda ratio=ratio, q=q, k=k, v=v: tome.tome_attention(q, k, v, ratio))
        rows.append(row)
    return rows
