"""``auto``: pick the acceleration that is fastest on THIS machine, by measuring it, never slower than eager.

What is fast depends on the hardware (bf16 is 4x faster on an AVX512-BF16 CPU and 14x slower on an
AVX2 one), so nothing is assumed: ``auto_accelerate`` builds each candidate worth trying here
(``auto_candidates``), samples one synthetic clip with it at the checkpoint's working size (this
compiles it, and its decoded frames give the PSNR against eager), then times single denoiser steps
on real captured inputs in rounds alternating with the eager model (eager, variant, eager, ...), so
a machine that slows down mid-way (another process, thermal limits) hits both alike. The speed-up
is the ratio of the two medians. The choice is the fastest candidate whose output stays within
``MIN_PSNR`` dB of eager and whose speed-up is at least ``MIN_GAIN``; when none qualifies, the
request's base runs (plain eager when everything was ``auto``). So ``auto`` never picks a variant
its own timing found slower than eager. The choice is cached (``auto_cache``): the next run with
the same machine, model, shape and libraries builds the chosen variant without measuring.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import auto_cache
from ._train import train_module
from .accelerate import AccelerationOptions, accelerate
from .auto_candidates import CHOOSABLE, Candidate, base_options, candidates, known_slow
from .denoiser import (
    LoadedModel,
    calibration_batch,
    capture_denoiser_inputs,
    condition_batch,
    get_denoiser,
    with_denoiser,
)
from .machine import MachineProfile, probe

sample_from_metadata = train_module("sampling.samplers").sample_from_metadata
log = logging.getLogger("PVTT")

MIN_PSNR = 35.0
#: A candidate must beat eager by this factor: below it the gain is within timing noise on a busy machine.
MIN_GAIN = 1.05
ROUNDS = 5
EAGER = "eager"
#: ``timer(name, call)`` runs ``call`` once and returns its duration in seconds (tests inject fake durations).
Timer = Callable[[str, Callable[[], object]], float]


@dataclass
class Trial:
    """One candidate's measurement (``error`` instead of numbers when it could not build or run)."""

    candidate: Candidate
    eager_s: list[float] = field(default_factory=list)
    variant_s: list[float] = field(default_factory=list)
    psnr: float | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """Median eager step time / median variant step time (>1: the variant is faster)."""
        if self.error or not self.variant_s:
            return None
        return statistics.median(self.eager_s) / statistics.median(self.variant_s)

    def to_dict(self) -> dict:
        med = (lambda xs: round(1000 * statistics.median(xs), 3) if xs else None)
        return {**self.candidate.to_dict(), "ratio": self.ratio, "eager_ms": med(self.eager_s),
                "ms": med(self.variant_s), "psnr": None if self.psnr in (None, float("inf")) else self.psnr,
                "identical": self.psnr == float("inf"), "error": self.error}


@dataclass
class AutoResult:
    model: LoadedModel
    chosen: str
    ratio: float  # measured speed-up of the chosen variant per denoiser step (1.0: eager)
    trials: list[dict]
    from_cache: bool
    warnings: list[str]
    record_path: Path | None = None

    def message(self) -> str:
        """What the node shows: the choice, the measured ratio, what else was tried, any warning."""
        tried = "; ".join(_describe_record(t) for t in self.trials if t["name"] != self.chosen)
        mine = next((t for t in self.trials if t["name"] == self.chosen), None)
        quality = "" if mine is None else (", identical output" if mine.get("identical") else
                                           f", {mine['psnr']:.1f} dB PSNR vs eager")
        source = "cached measurement" if self.from_cache else "measured now"
        text = (f"auto chose {self.chosen}: x{self.ratio:.2f} eager per denoiser step{quality} ({source}, median "
                f"of alternating rounds)" + (f". Also tried: {tried}" if tried else ""))
        return "\n".join([text, *(f"WARNING: {w}" for w in self.warnings)])


def _describe_record(trial: dict) -> str:
    if trial.get("error"):
        return f"{trial['name']}: failed"
    quality = "identical" if trial.get("identical") else f"{trial['psnr']:.1f} dB"
    return f"{trial['name']} x{trial['ratio']:.2f} ({quality})"


def choose(trials: list[Trial], min_psnr: float = MIN_PSNR, min_gain: float = MIN_GAIN) -> Trial | None:
    """The fastest trial with ratio >= ``min_gain`` and PSNR >= ``min_psnr``; None when none qualifies."""
    eligible = [t for t in trials if t.ratio is not None and t.ratio >= min_gain and t.psnr is not None
                and t.psnr >= min_psnr]
    return max(eligible, key=lambda t: t.ratio, default=None)


def wall_timer(device: torch.device) -> Timer:
    def timer(_name: str, call: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    return timer


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of frames in 0..1 (inf when identical)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


@torch.no_grad()
def sample_frames(loaded: LoadedModel) -> torch.Tensor:
    """One synthetic clip sampled the checkpoint's way at its video size, decoded: the candidate's
    warm-up (compilation happens here, at the shapes sampling uses) and its output for the PSNR."""
    device = next(loaded.model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in calibration_batch(loaded, 1, offset=2000).items()}
    cond = condition_batch(loaded.model, batch)
    x0 = sample_from_metadata(loaded.model, cond, loaded.metadata, None, torch.Generator().manual_seed(0))
    return loaded.model.decode(x0).float().cpu()


def build(loaded: LoadedModel, candidate: Candidate, ort_dir: Path | None) -> LoadedModel:
    if candidate.runtime == "onnxruntime":
        from .ort_backend import ort_accelerate

        return ort_accelerate(loaded, ort_dir)
    return accelerate(loaded, candidate.options)


def _eager(loaded: LoadedModel, record: dict) -> LoadedModel:
    """The checkpoint's own denoiser, with the auto record in its metadata (weights shared, not copied)."""
    return with_denoiser(loaded, get_denoiser(loaded.model), {"label": EAGER, "runtime": "pytorch", **record})


def measure(loaded: LoadedModel, trial: Trial, model: LoadedModel, eager_frames: torch.Tensor,
            inputs: dict[str, torch.Tensor], rounds: int, timer: Timer) -> None:
    """Fill ``trial``: PSNR of one sampled clip against eager, then ``rounds`` alternating step timings."""
    trial.psnr = psnr(sample_frames(model), eager_frames)
    eager_step, variant_step = get_denoiser(loaded.model), get_denoiser(model.model)
    with torch.no_grad():
        variant_step(**inputs)  # the captured call's shapes may differ from sampling's: compile them untimed
        for _ in range(rounds):
            trial.eager_s.append(timer(EAGER, lambda: eager_step(**inputs)))
            trial.variant_s.append(timer(trial.candidate.name, lambda: variant_step(**inputs)))


def auto_accelerate(loaded: LoadedModel, request: dict[str, str], attention: str = "auto", tome_ratio: float = 0.0,
                    cache_dir: str | Path | None = None, ort_dir: str | Path | None = None,
                    profile: MachineProfile | None = None, rounds: int = ROUNDS, min_psnr: float = MIN_PSNR,
                    min_gain: float = MIN_GAIN, timer: Timer | None = None,
                    on_candidate: Callable[[int, int, str], None] | None = None) -> AutoResult:
    """``loaded`` accelerated by the measured-fastest variant allowed by ``request`` (widget -> value or
    ``auto``). ``cache_dir``: where choices are remembered (None: always measure). ``ort_dir``: where
    ONNX exports go (None: ONNX Runtime is not tried). ``on_candidate(done, total, name)`` is called
    before each candidate (the node's progress bar and Cancel)."""
    profile = profile or probe()
    device = next(loaded.model.parameters()).device
    request = {k: request.get(k, "auto") for k in CHOOSABLE}
    guided = loaded.sampler["kind"] == "euler_cfg" and loaded.sampler.get("cfg", 1.0) != 1.0
    # ONNX Runtime's graph is exported for one clip per call; a CFG teacher calls with two
    tried = candidates(profile, device, request, attention, tome_ratio, ort=ort_dir is not None and not guided)
    base = base_options(request, attention, tome_ratio)
    base_name = base.label() if base != AccelerationOptions(attention=attention, tome_ratio=tome_ratio) else EAGER
    warnings = known_slow(base, profile, device) if base_name != EAGER else []
    key = auto_cache.model_key(loaded, request, profile, str(device), min_psnr) if cache_dir else None
    ort_dir = Path(ort_dir) if ort_dir is not None else None

    record = auto_cache.load(cache_dir, key) if key else None
    if record is not None:
        result = _from_record(loaded, record, tried, ort_dir, warnings)
        if result is not None:
            result.record_path = auto_cache.entry_path(cache_dir, key)
            return result

    timer = timer or wall_timer(device)
    eager_frames = sample_frames(loaded)
    inputs = capture_denoiser_inputs(loaded)
    trials: list[Trial] = []
    kept: dict[str, LoadedModel] = {}  # the base and the best qualifying candidate so far; the rest is freed
    for i, candidate in enumerate(tried):
        if on_candidate:
            on_candidate(i, len(tried), candidate.name)
        trial = Trial(candidate)
        trials.append(trial)
        try:
            model = build(loaded, candidate, ort_dir)
            measure(loaded, trial, model, eager_frames, inputs, rounds, timer)
        except Exception as exc:  # a variant that cannot run here is skipped, with the reason, not fatal
            if type(exc).__name__ == "InterruptProcessingException":  # ComfyUI's Cancel
                raise
            trial.error = f"{type(exc).__name__}: {exc}"
            log.info("auto: %s cannot run here: %s", candidate.name, trial.error)
            continue
        best = choose(trials, min_psnr, min_gain)
        if best is trial or candidate.name == base_name:
            kept[candidate.name] = model
        kept = {n: m for n, m in kept.items() if n in (base_name, best.candidate.name if best else None)}
    best = choose(trials, min_psnr, min_gain)
    chosen = best.candidate.name if best else base_name
    by_name = {t.candidate.name: t for t in trials}
    ratio = by_name[chosen].ratio if chosen in by_name else 1.0
    if chosen == base_name != EAGER and (ratio is None or ratio < 1.0):
        warnings.append(f"the requested {base_name} measured x{ratio or 0:.2f} eager here (slower); set the "
                        f"PVTT Accelerate widgets to auto to let it choose")
    summary = [t.to_dict() for t in trials]
    meta = {"auto": {"chosen": chosen, "ratio": ratio, "trials": summary, "from_cache": False}}
    if chosen == EAGER:
        model = _eager(loaded, meta)
    elif chosen in kept:
        model = with_denoiser(kept[chosen], get_denoiser(kept[chosen].model), meta)
    else:  # the base failed to build: its error is in the trials
        raise RuntimeError(f"auto: the requested {base_name} cannot run here: {by_name[chosen].error}")
    path = None
    if key:
        path = auto_cache.store(cache_dir, key, {"chosen": chosen, "ratio": ratio, "trials": summary,
                                                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "machine": profile.summary()})
    result = AutoResult(model, chosen, ratio or 1.0, summary, False, warnings, path)
    log.info("%s", result.message())
    return result


def _from_record(loaded: LoadedModel, record: dict, tried: list[Candidate], ort_dir: Path | None,
                 warnings: list[str]) -> AutoResult | None:
    """The cached choice, built and warmed up; None when it cannot be rebuilt (then measure again)."""
    chosen, ratio = record.get("chosen"), record.get("ratio") or 1.0
    meta = {"auto": {"chosen": chosen, "ratio": ratio, "trials": record.get("trials", []), "from_cache": True}}
    if chosen == EAGER:
        return AutoResult(_eager(loaded, meta), chosen, 1.0, record.get("trials", []), True, warnings)
    candidate = next((c for c in tried if c.name == chosen), None)
    if candidate is None:
        return None
    try:
        model = build(loaded, candidate, ort_dir)
        sample_frames(model)  # warm-up: compile now, not in the first transfer
    except Exception as exc:  # noqa: BLE001 - any failure means "measure again", and says why
        log.warning("auto: the cached choice %s no longer runs (%s); measuring again", chosen, exc)
        return None
    model = with_denoiser(model, get_denoiser(model.model), meta)
    return AutoResult(model, chosen, ratio, record.get("trials", []), True, warnings)
