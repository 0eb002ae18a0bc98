"""The sigmas a few-step student is sampled at, read from any file PVTT writes for it.

A student is trained at a few fixed timesteps under a shifted flow schedule; sampling it at other
sigmas (e.g. a scheduler's evenly spaced ones) wastes the distillation. The timesteps and shift
travel in the file's safetensors header, in all three forms:

- a PVTT checkpoint (``pvtt`` header: ``sampler.timesteps`` and ``schedule.shift``);
- a ComfyUI-native export (``pvtt_native`` header: the same metadata);
- a LoRA from ``export-lora`` in any key format (``pvtt_lora`` header: ``timesteps`` and ``shift``).

ComfyUI's flow models (``ModelSamplingDiscreteFlow``) call the network at ``timestep = sigma * 1000``
and take the sigmas as they come; samplers stop at a trailing 0. So the list is the student's shifted
sigmas (``FlowSchedule.student_sigmas``) followed by 0.0.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from .schedule import FlowSchedule

#: Header keys that may carry a student's sampling, in the order they are tried.
HEADERS = ("pvtt", "pvtt_native", "pvtt_lora")
FIX = ("use a PVTT student checkpoint, its `pvtt_train export --format comfy` file, or a LoRA written by "
       "`pvtt_train export-lora`.")


def _sampling_of(meta: dict) -> tuple[list, dict] | None:
    """(timesteps, schedule) of a PVTT checkpoint's or LoRA's metadata, None if it names none."""
    if "timesteps" in meta and "shift" in meta:  # a LoRA's
        return meta["timesteps"], {"shift": meta["shift"], "num_train_timesteps": meta.get("num_train_timesteps",
                                                                                           1000)}
    sampler, schedule = meta.get("sampler"), meta.get("schedule")
    if isinstance(sampler, dict) and isinstance(schedule, dict):
        return sampler.get("timesteps"), schedule
    return None


def read_student_sampling(path: str | Path) -> dict:
    """``{"timesteps", "shift", "num_train_timesteps", "sigmas"}`` of a student file (header only)."""
    from .safetensors_header import safetensors_header

    path = Path(path)
    header, _ = safetensors_header(path, f"copy or export {path.name} again.")
    for key in HEADERS:
        if key not in header:
            continue
        try:
            found = _sampling_of(json.loads(header[key]))
        except (json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{path.name}: its {key!r} header is not a JSON object ({exc}); {FIX}") from exc
        if found is None:
            continue
        timesteps, schedule = found
        if not timesteps:
            raise CheckpointError(f"{path.name} is not a few-step student (its sampler lists no timesteps, e.g. a "
                                  f"teacher); {FIX}")
        return {"timesteps": [float(t) for t in timesteps], "shift": float(schedule["shift"]),
                "num_train_timesteps": int(schedule.get("num_train_timesteps", 1000)),
                "sigmas": comfy_sigmas(timesteps, FlowSchedule(float(schedule["shift"]),
                                                               int(schedule.get("num_train_timesteps", 1000))))}
    raise CheckpointError(f"{path.name} carries no PVTT metadata, so its student timesteps are unknown; {FIX}")


def comfy_sigmas(timesteps, schedule: FlowSchedule) -> list[float]:
    """The student's sigmas as ComfyUI's samplers take them: shifted, then a closing 0."""
    return [*schedule.student_sigmas(timesteps), 0.0]
