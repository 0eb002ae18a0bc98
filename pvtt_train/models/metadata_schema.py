"""The schema of PVTT's model metadata: every number a loader trusts is checked here before anything is built.

A checkpoint's ``pvtt`` header, a Wan-VACE folder's ``config.json`` files, its ``pvtt.json`` and its
scheduler config all come from files anyone can edit. Read blindly, ``num_layers = 1e6`` exhausts memory
before a weight is read, ``shift: NaN`` or ``steps: 0`` make a clip of NaN or of pure noise, and a string
where a number belongs ends in a TypeError deep inside torch. So the whole document is checked first:
types, ranges, and the consistency between fields (heads and head size, patches and clip size, VACE
layers and layer count, timesteps and the schedule). Each failure is one ``CheckpointError`` that names
the file, the field, what it holds and what is allowed.

The tables below list every field and its range. The ranges are generous (several times the largest
Wan model) yet small enough that building the model on the meta device, which ``model_budget`` does to
count its memory, stays instant. Unknown keys are refused where they would change the meaning (the
model, schedule, sampler and video sections); the top level may carry extra information (provenance,
gate scores, notes) that no loader reads.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel

from ..errors import CheckpointError
from .paste_residual import PREDICTIONS

FORMAT = "pvtt"
FORMAT_VERSION = 1
#: Largest PVTT metadata document (JSON text) read at all; real ones are a few kilobytes.
MAX_JSON_CHARS = 16 * 1024 * 1024
#: Deepest nesting of objects and lists accepted; real metadata nests about five levels.
MAX_JSON_DEPTH = 64
ARCHS = ("wan_concat", "wan_vace")
#: Input and output channels ``WanConcatPVTT`` gives its backbone (noisy clip + 7 condition channels -> clip).
CONCAT_CHANNELS = (10, 3)
#: ``WanAttention`` always applies RMS norm across heads, whatever the config says; other values would be ignored.
QK_NORMS = ("rms_norm_across_heads",)


# --- parsing -------------------------------------------------------------------------------------

def parse_json_object(text: str, source: str, fix: str) -> dict:
    """``text`` as a JSON object, refusing absurd size or nesting with one ``CheckpointError``.

    Python's parser recurses once per nesting level, so a document nested 100 000 deep raises a
    RecursionError; it is caught here, and anything deeper than ``MAX_JSON_DEPTH`` is refused too, so
    no later ``json.dumps`` or comparison of the data can hit the recursion limit either."""
    if len(text) > MAX_JSON_CHARS:
        raise CheckpointError(f"{source}: its JSON is {len(text) / 1e6:.1f} MB, more than the "
                              f"{MAX_JSON_CHARS / 1e6:.0f} MB any PVTT metadata needs; {fix}")
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise CheckpointError(f"{source}: its JSON is nested too deeply to read (more than {MAX_JSON_DEPTH} "
                              f"levels); {fix}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}: its JSON is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: its JSON holds a {type(data).__name__}, not an object; {fix}")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{source}: its JSON is nested more than {MAX_JSON_DEPTH} levels deep; {fix}")
    return data


def json_depth(data: Any) -> int:
    """Nesting depth of parsed JSON, counted without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


# --- field types ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One metadata field: its JSON type, its allowed range and whether null or absence is allowed.

    ``kind`` is "int", "number", "bool", "text", or a list of those ("int list", "number list", "bool list")
    whose length lies in ``length``. Ranges are inclusive unless ``above`` (strictly greater than ``low``)."""

    kind: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    nullable: bool = False
    choices: tuple = ()
    length: tuple[int, int] = (0, 0)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None when it fits."""
        if value is None:
            return None if self.nullable else f"is null; it must be {self.describe()}"
        if self.kind.endswith(" list"):
            if not isinstance(value, list) or not self.length[0] <= len(value) <= self.length[1]:
                return f"is {_show(value)}; it must be {self.describe()}"
            item = Field(self.kind[:-5], self.low, self.high, self.above, choices=self.choices)
            bad = next((v for v in value if item.problem(v) is not None), _NOTHING)
            return None if bad is _NOTHING else f"holds {_show(bad)}; it must be {self.describe()}"
        if not _is_kind(value, self.kind) or (self.choices and value not in self.choices):
            return f"is {_show(value)}; it must be {self.describe()}"
        if self.kind in ("int", "number") and not self._in_range(value):
            return f"is {_show(value)}; it must be {self.describe()}"
        return None

    def _in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        return low_ok and (self.high is None or value <= self.high)

    def describe(self) -> str:
        base = self.kind.removesuffix(" list")
        what = {"int": "a whole number", "number": "a finite number", "bool": "true or false", "text": "a string",
                "null": "null (PVTT supports Wan 2.1's unpatchified VAE)"}[base]
        if self.choices:
            what = "one of " + ", ".join(json.dumps(c) for c in self.choices)
        elif base in ("int", "number") and (self.low is not None or self.high is not None):
            left = "(" if self.above else "["
            what += f" in {left}{_num(self.low)}, {_num(self.high)}]"
        if self.kind.endswith(" list"):
            lo, hi = self.length
            count = f"{lo}" if lo == hi else f"{lo} to {hi}"
            what = f"a list of {count} values, each {what}"
        return what + (" (or null)" if self.nullable and base != "null" else "")


_NOTHING = object()


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return kind == "text" and isinstance(value, str)


def _num(x: float | None) -> str:
    return "inf" if x is None else f"{x:g}"


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    kind = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}.get(type(value))
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{kind} {text}" if kind and not isinstance(value, (int, float)) else text


def whole(low: int, high: int, **kw) -> Field:
    return Field("int", low, high, **kw)


def number(low: float | None, high: float | None, **kw) -> Field:
    return Field("number", low, high, **kw)


FLAG = Field("bool")

# --- tables --------------------------------------------------------------------------------------

SCHEDULE = {"shift": number(0, 100, above=True), "num_train_timesteps": whole(1, 10_000)}
VIDEO = {"frames": whole(1, 1024), "height": whole(1, 8192), "width": whole(1, 8192)}
SAMPLER_STEPS = whole(1, 1000)
SAMPLERS = {
    "euler_cfg": {"kind": Field("text"), "steps": SAMPLER_STEPS, "cfg": number(0, 100), "eta": number(0, 1)},
    "few_step": {"kind": Field("text"), "steps": SAMPLER_STEPS, "timesteps": Field("number list", length=(1, 1000))},
}
#: Required keys of each sampler kind (``cfg`` defaults to 1, no guidance; ``eta`` to 0, the Euler ODE: above 0
#: the teacher is sampled by Euler ancestral, ``sampling.samplers.sample_teacher_ancestral``).
SAMPLER_REQUIRED = {"euler_cfg": ("kind", "steps"), "few_step": ("kind", "steps", "timesteps")}

#: ``WanTransformer3DModel`` (wan_concat's backbone) and ``WanVACETransformer3DModel`` arguments.
TRANSFORMER = {
    "patch_size": Field("int list", 1, 16, length=(3, 3)),
    "num_attention_heads": whole(1, 256),
    "attention_head_dim": whole(6, 1024),
    "in_channels": whole(1, 4096),
    "out_channels": whole(1, 4096, nullable=True),
    "text_dim": whole(1, 65_536),
    "freq_dim": whole(2, 65_536),
    "ffn_dim": whole(1, 262_144),
    "num_layers": whole(1, 200),
    "cross_attn_norm": FLAG,
    "qk_norm": Field("text", choices=QK_NORMS),
    "eps": number(0, 1, above=True),
    "image_dim": whole(1, 65_536, nullable=True),
    "added_kv_proj_dim": whole(1, 65_536, nullable=True),
    "rope_max_seq_len": whole(1, 65_536),
    "pos_embed_seq_len": whole(1, 1 << 20, nullable=True),
}
VACE_TRANSFORMER = {**TRANSFORMER, "vace_layers": Field("int list", 0, 199, length=(1, 200)),
                    "vace_in_channels": whole(1, 4096)}
#: ``AutoencoderKLWan`` arguments (Wan 2.1's VAE; the patchified Wan 2.2 VAE is not supported).
VAE = {
    "base_dim": whole(1, 1024),
    "decoder_base_dim": whole(1, 1024, nullable=True),
    "z_dim": whole(1, 256),
    "dim_mult": Field("int list", 1, 16, length=(1, 8)),
    "num_res_blocks": whole(1, 16),
    "attn_scales": Field("number list", 0, 1, length=(0, 8)),
    "temperal_downsample": Field("bool list", length=(0, 7)),
    "dropout": number(0, 1),
    "latents_mean": Field("number list", -1e4, 1e4, length=(1, 256)),
    "latents_std": Field("number list", 0, 1e4, above=True, length=(1, 256)),
    "is_residual": FLAG,
    "in_channels": whole(3, 3),
    "out_channels": whole(3, 3),
    "patch_size": Field("null", nullable=True),
    "scale_factor_temporal": whole(1, 64, nullable=True),
    "scale_factor_spatial": whole(1, 64, nullable=True),
}
CONTEXT_TOKENS = whole(1, 4096)
#: Top-level sections every PVTT checkpoint has, and the optional ones with a known shape.
REQUIRED_SECTIONS = ("model", "schedule", "sampler", "video")
OPTIONAL_TOP = {"format": Field("text", choices=(FORMAT,)), "stage": Field("text"),
                "stage_index": whole(0, 10_000)}
OPTIONAL_OBJECTS = ("conditioning", "gate", "provenance", "acceleration")


# --- validation ----------------------------------------------------------------------------------

def join(name: str, key: str) -> str:
    """A field's dotted name; a whole config file is the section "" (its fields are named bare)."""
    return f"{name}.{key}" if name else key


class Checker:
    """Collects nothing: the first problem raises, naming the source, the field and the fix."""

    def __init__(self, source: str, fix: str):
        self.source, self.fix = source, fix

    def fail(self, field: str, problem: str) -> None:
        raise CheckpointError(f"{self.source}: {field} {problem}. {self.fix}")

    def section(self, data: Any, name: str) -> dict:
        if not isinstance(data, dict):
            self.fail(name or "the file", f"is {_show(data)}; it must be an object")
        return data

    def fields(self, data: dict, table: dict[str, Field], name: str, required: tuple[str, ...] = (),
               defaults: dict | None = None, others_allowed: bool = False) -> dict:
        """Check ``data`` against ``table``; returns the values in force (``defaults`` filled in).
        Keys outside ``table`` are refused unless ``others_allowed`` (a file PVTT reads only part of)."""
        unknown = sorted(set(data) - set(table))
        if unknown and not others_allowed:
            self.fail(name or "the file", f"has unknown keys {unknown}, which this PVTT cannot honour (known: "
                                          f"{sorted(table)}); update PVTT (or diffusers) or remove them")
        missing = [k for k in required if k not in data]
        if missing:
            self.fail(name or "the file", f"lacks {missing}")
        values = {**(defaults or {}), **data}
        for key, field in table.items():
            if key in values and (problem := field.problem(values[key])) is not None:
                self.fail(join(name, key), problem)
        return values


def validate_metadata(meta: Any, source: str, fix: str = "Re-export it with pvtt_train.") -> dict:
    """Check a whole ``pvtt`` metadata document; returns it unchanged, or raises ``CheckpointError``."""
    check = Checker(source, fix)
    meta = check.section(meta, "its PVTT metadata")
    version = meta.get("format_version", 0)
    if not _is_kind(version, "int") or version < 0:
        check.fail("format_version", f"is {_show(version)}; it must be a whole number in [0, {FORMAT_VERSION}]")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source} was written by a newer PVTT (format {version}); update PVTT to load it.")
    missing = [k for k in REQUIRED_SECTIONS if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: its PVTT metadata lacks {missing}; re-export it with pvtt_train.")
    for key, field in OPTIONAL_TOP.items():
        if key in meta and (problem := field.problem(meta[key])) is not None:
            check.fail(key, problem)
    for key in OPTIONAL_OBJECTS:
        if key in meta:
            check.section(meta[key], key)
    model = validate_model_config(meta["model"], check)
    schedule = validate_schedule(meta["schedule"], check)
    validate_sampler(meta["sampler"], schedule, check)
    validate_video(meta["video"], model, check)
    return meta


def validate_schedule(schedule: Any, check: Checker) -> dict:
    return check.fields(check.section(schedule, "schedule"), SCHEDULE, "schedule",
                        required=("shift", "num_train_timesteps"))


def validate_sampler(sampler: Any, schedule: dict, check: Checker) -> dict:
    """Known kind, steps >= 1, and for few-step samplers one timestep per step, strictly decreasing
    within [1, num_train_timesteps] (a schedule outside it would sample from the wrong noise level)."""
    sampler = check.section(sampler, "sampler")
    kind = sampler.get("kind")
    if kind not in SAMPLERS:
        check.fail("sampler.kind", f"is {_show(kind)}; it must be one of {sorted(SAMPLERS)}")
    values = check.fields(sampler, SAMPLERS[kind], "sampler", required=SAMPLER_REQUIRED[kind])
    if kind == "few_step":
        top = schedule["num_train_timesteps"]
        timesteps = values["timesteps"]
        if len(timesteps) != values["steps"]:
            check.fail("sampler.timesteps", f"has {len(timesteps)} values but sampler.steps is {values['steps']}; "
                                            f"they must agree")
        if any(not 1 <= t <= top for t in timesteps) or any(a <= b for a, b in pairwise(timesteps)):
            check.fail("sampler.timesteps", f"is {_show(timesteps)}; it must be strictly decreasing within "
                                            f"[1, {top}] (schedule.num_train_timesteps)")
    return values


def validate_video(video: Any, model: dict, check: Checker) -> dict:
    """Frames, height and width in range, and a clip the model's patches (and VAE) can take."""
    values = check.fields(check.section(video, "video"), VIDEO, "video", required=tuple(VIDEO))
    frames, height, width = values["frames"], values["height"], values["width"]
    if model["arch"] == "wan_concat":
        cfg = model["backbone_config"]
        grid, patch = (frames, height, width), cfg["patch_size"]
        extra = ""
    else:
        tc, vae = model["transformer"], model["vae"]
        t, s = 2 ** sum(vae["temperal_downsample"]), 2 ** len(vae["temperal_downsample"])
        if (frames - 1) % t:
            lower = (frames - 1) // t * t + 1
            check.fail("video.frames", f"is {frames}, which does not fit the model: the Wan VAE encodes 1 + {t}*k "
                                       f"frames; use {lower} or {lower + t}")
        if height % s or width % s:
            check.fail("video", f"is {width}x{height} (width x height), which does not fit the model: both must "
                                f"be multiples of the VAE's spatial factor {s}")
        cfg = tc
        grid, patch = ((frames - 1) // t + 1, height // s, width // s), tc["patch_size"]
        extra = " in latent space"
    for axis, size, p in zip(("frames", "height", "width"), grid, patch):
        if size % p:
            check.fail(f"video.{axis}", f"gives {size}{extra}, which does not fit the model: it must be a multiple of "
                                        f"the transformer's patch {p}")
    # Wan's rotary embedding has rope_max_seq_len positions per axis; the VACE reference frame adds one.
    tokens = (grid[0] // patch[0] + (model["arch"] == "wan_vace"), grid[1] // patch[1], grid[2] // patch[2])
    limit = cfg["rope_max_seq_len"]
    if max(tokens) > limit:
        check.fail("video", f"of {frames} frames at {width}x{height} does not fit the model: it gives {tokens} patches "
                            f"per axis (frames, height, width), and the transformer's rope_max_seq_len allows at most "
                            f"{limit}")
    return values


def validate_model_config(model: Any, check: Checker) -> dict:
    """The ``model`` section: a known arch and, for it, the diffusers configs in range and consistent.

    Returns the section with each config completed by the diffusers defaults it would be built with
    (a missing ``num_layers`` means diffusers' 40), so later checks see what would really be built."""
    model = check.section(model, "model")
    arch = model.get("arch")
    if arch not in ARCHS:
        raise CheckpointError(
            f"{check.source}: unknown PVTT architecture {arch!r} in checkpoint metadata; this PVTT version knows "
            f"'wan_concat' and 'wan_vace'. Update PVTT, or re-export the checkpoint with pvtt_train.")
    if arch == "wan_concat":
        _only_keys(model, ("arch", "backbone_config", "context_tokens", "prediction"), ("arch", "backbone_config"),
                   check)
        if model.get("prediction", "velocity") not in PREDICTIONS:
            check.fail("model.prediction", f"is {_show(model['prediction'])}; it must be one of {list(PREDICTIONS)}")
        backbone = transformer_config(model["backbone_config"], "wan_concat", "model.backbone_config", check)
        for key, want in zip(("in_channels", "out_channels"), CONCAT_CHANNELS):
            if model["backbone_config"].get(key, want) != want:
                check.fail(f"model.backbone_config.{key}", f"is {_show(model['backbone_config'][key])}; a wan_concat "
                                                           f"backbone always has {want}")
        return {**model, "backbone_config": backbone}
    _only_keys(model, ("arch", "transformer", "vae", "context_tokens"), ("arch", "transformer", "vae"), check)
    transformer = transformer_config(model["transformer"], "wan_vace", "model.transformer", check)
    vae = vae_config(model["vae"], "model.vae", check)
    check_vace_pair(transformer, vae, "model", check)
    return {**model, "transformer": transformer, "vae": vae}


def _only_keys(model: dict, known: tuple[str, ...], required: tuple[str, ...], check: Checker) -> None:
    unknown = sorted(set(model) - set(known))
    if unknown:
        check.fail("model", f"has unknown keys {unknown} (known: {list(known)})")
    missing = [k for k in required if k not in model]
    if missing:
        check.fail("model", f"lacks {missing}")
    if "context_tokens" in model and (problem := CONTEXT_TOKENS.problem(model["context_tokens"])) is not None:
        check.fail("model.context_tokens", problem)


def transformer_config(config: Any, arch: str, name: str, check: Checker) -> dict:
    """A Wan transformer config in range, with heads, head size, VACE layers and rope consistent."""
    cls, table = (WanTransformer3DModel, TRANSFORMER) if arch == "wan_concat" else \
        (WanVACETransformer3DModel, VACE_TRANSFORMER)
    values = check.fields(public_config(check.section(config, name)), table, name, defaults=constructor_defaults(cls))
    head = values["attention_head_dim"]
    if head % 2:
        check.fail(join(name, "attention_head_dim"), f"is {head}; Wan's rotary embedding needs an even head size")
    inner = values["num_attention_heads"] * head
    if inner > 65_536:
        heads = values["num_attention_heads"]
        check.fail(name or "the config", f"has num_attention_heads x attention_head_dim = {heads} x {head} = {inner}, "
                                         f"more than the 65536 wide layers any Wan model uses")
    if arch == "wan_vace":
        layers = values["vace_layers"]
        if any(a >= b for a, b in pairwise(layers)) or layers[-1] >= values["num_layers"]:
            check.fail(join(name, "vace_layers"), f"is {_show(layers)}; it must list distinct transformer layers in "
                                              f"increasing order, each below num_layers ({values['num_layers']})")
    return values


def vae_config(config: Any, name: str, check: Checker) -> dict:
    """A Wan 2.1 VAE config in range: stages, down-sampling flags and latent statistics consistent."""
    values = check.fields(public_config(check.section(config, name)), VAE, name,
                          defaults=constructor_defaults(AutoencoderKLWan))
    stages = len(values["dim_mult"])
    if len(values["temperal_downsample"]) != stages - 1:
        check.fail(join(name, "temperal_downsample"), f"has {len(values['temperal_downsample'])} flags; a VAE with "
                                                  f"{stages} stages (dim_mult) needs {stages - 1}")
    z = values["z_dim"]
    for key in ("latents_mean", "latents_std"):
        if len(values[key]) != z:
            check.fail(join(name, key), f"has {len(values[key])} values; it needs z_dim = {z}")
    return values


def check_vace_pair(transformer: dict, vae: dict, name: str, check: Checker) -> None:
    """Transformer channels must match the VAE latent (the same rule ``wan_vace.check_compatible``
    applies to built modules, here on the configs so nothing is built for a mismatched pair)."""
    z, s = vae["z_dim"], 2 ** len(vae["temperal_downsample"])
    if transformer["in_channels"] != z or (transformer["out_channels"] or transformer["in_channels"]) != z:
        check.fail(name, f"has transformer in/out channels {transformer['in_channels']}/{transformer['out_channels']}; "
                         f"both must equal the VAE's z_dim {z}")
    if transformer["vace_in_channels"] != 2 * z + s * s:
        check.fail(name, f"has transformer vace_in_channels {transformer['vace_in_channels']}, but a VAE with z_dim "
                         f"{z} and spatial factor {s} gives VACE control of 2*{z} + {s}*{s} = {2 * z + s * s} channels")


def public_config(config: dict) -> dict:
    """A diffusers config without its private ``_class_name``-style keys (diffusers ignores them too)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def constructor_defaults(cls) -> dict:
    """The constructor defaults diffusers fills in for keys a config leaves out."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: (list(p.default) if isinstance(p.default, tuple) else p.default) for p in params
            if p.default is not inspect.Parameter.empty}
