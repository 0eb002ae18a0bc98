"""Checkpoint metadata is validated as a whole before anything is built (issue 12, defect 8).

Every case edits one field of a real micro checkpoint's ``pvtt`` header and loads the file: the error
must be one ``CheckpointError`` that names the file, the field and what is allowed, and nothing may be
allocated on the way (the absurd sizes would exhaust memory if the model were built).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from _tiny import MICRO_BACKBONE, micro_teacher
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pvtt_train.models.checkpoint as ckpt
from pvtt_train.errors import CheckpointError
from pvtt_train.models.checkpoint import load_checkpoint, read_metadata
from pvtt_train.models.pvtt_model import WanConcatPVTT


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return micro_teacher(tmp_path_factory.mktemp("schema") / "teacher.safetensors")


def metadata_of(path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["pvtt"])


def edited(teacher, tmp_path, edit, raw: str | None = None, name="edited.safetensors"):
    """The teacher's tensors under metadata changed by ``edit(meta)`` (or the raw JSON text ``raw``)."""
    meta = metadata_of(teacher)
    edit(meta)
    path = tmp_path / name
    save_file(load_file(str(teacher)), str(path), metadata={"pvtt": raw if raw is not None else json.dumps(meta)})
    return path


def setter(*keys, value):
    def edit(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def few_step(timesteps, steps=None):
    def edit(meta):
        meta["sampler"] = {"kind": "few_step", "steps": len(timesteps) if steps is None else steps,
                           "timesteps": timesteps}
    return edit


#: (case, edit, field named, allowed range named). The cases of issue 12 first, then the rest of the schema.
CASES = [
    ("format-version-string", setter("format_version", value="1"), r"format_version is a string \"1\"",
     r"whole number in \[0, 1\]"),
    ("model-is-a-string", setter("model", value="wan_concat"), r"model is a string \"wan_concat\"",
     r"must be an object"),
    ("sampler-empty", setter("sampler", value={}), r"sampler\.kind is null", r"one of \['euler_cfg', 'few_step'\]"),
    ("timesteps-empty", few_step([], steps=1), r"sampler\.timesteps is a list \[\]", r"list of 1 to 1000 values"),
    ("frames-zero", setter("video", "frames", value=0), r"video\.frames is 0", r"whole number in \[1, 1024\]"),
    ("layers-1e6-float", setter("model", "backbone_config", "num_layers", value=1e6),
     r"model\.backbone_config\.num_layers is 1000000\.0", r"whole number in \[1, 200\]"),
    ("layers-1e6", setter("model", "backbone_config", "num_layers", value=10 ** 6),
     r"model\.backbone_config\.num_layers is 1000000", r"whole number in \[1, 200\]"),
    ("head-dim-1e9", setter("model", "backbone_config", "attention_head_dim", value=10 ** 9),
     r"attention_head_dim is 1000000000", r"whole number in \[6, 1024\]"),
    ("shift-nan", setter("schedule", "shift", value=float("nan")), r"schedule\.shift is nan",
     r"finite number in \(0, 100\]"),
    ("shift-zero", setter("schedule", "shift", value=0), r"schedule\.shift is 0", r"finite number in \(0, 100\]"),
    ("euler-steps-0", setter("sampler", "steps", value=0), r"sampler\.steps is 0", r"whole number in \[1, 1000\]"),
    ("timesteps-out-of-range", few_step([5000, -1000]), r"sampler\.timesteps is a list \[5000, -1000\]",
     r"strictly decreasing within \[1, 1000\]"),
    ("timesteps-increasing", few_step([250, 500, 750]), r"sampler\.timesteps is a list \[250, 500, 750\]",
     r"strictly decreasing within \[1, 1000\]"),
    ("timesteps-count", few_step([1000, 500], steps=3), r"sampler\.timesteps has 2 values but sampler\.steps is 3",
     r"must agree"),
    ("sampler-kind-unknown", setter("sampler", "kind", value="ddim"), r"sampler\.kind is a string \"ddim\"",
     r"one of \['euler_cfg', 'few_step'\]"),
    ("sampler-unknown-key", setter("sampler", "sigmas", value=[1.0, 0.5]), r"sampler has unknown keys \['sigmas'\]",
     r"known: \['cfg', 'eta', 'kind', 'steps'\]"),
    ("cfg-inf", setter("sampler", "cfg", value=float("inf")), r"sampler\.cfg is inf", r"finite number in \[0, 100\]"),
    ("eta-above-1", setter("sampler", "eta", value=1.5), r"sampler\.eta is 1\.5", r"finite number in \[0, 1\]"),
    ("train-timesteps-huge", setter("schedule", "num_train_timesteps", value=10 ** 9),
     r"schedule\.num_train_timesteps is 1000000000", r"whole number in \[1, 10000\]"),
    ("schedule-unknown-key", setter("schedule", "sigma_min", value=0.1), r"schedule has unknown keys \['sigma_min'\]",
     r"known: \['num_train_timesteps', 'shift'\]"),
    ("height-not-patch-multiple", setter("video", "height", value=15), r"video\.height gives 15, which does not fit",
     r"multiple of the transformer's patch 2"),
    ("frames-beyond-rope", setter("video", "frames", value=33), r"video of 33 frames .* does not fit the model",
     r"rope_max_seq_len allows at most 32"),
    ("width-huge", setter("video", "width", value=10 ** 6), r"video\.width is 1000000", r"whole number in \[1, 8192\]"),
    ("heads-times-dim",
     lambda m: m["model"]["backbone_config"].update(num_attention_heads=256, attention_head_dim=1024),
     r"num_attention_heads x attention_head_dim = 256 x 1024 = 262144", r"more than the 65536"),
    ("odd-head-dim", setter("model", "backbone_config", "attention_head_dim", value=15),
     r"attention_head_dim is 15", r"even head size"),
    ("concat-in-channels", setter("model", "backbone_config", "in_channels", value=5),
     r"model\.backbone_config\.in_channels is 5", r"always has 10"),
    ("backbone-unknown-key", setter("model", "backbone_config", "num_experts", value=8),
     r"model\.backbone_config has unknown keys \['num_experts'\]", r"update PVTT \(or diffusers\)"),
    ("patch-size-bad", setter("model", "backbone_config", "patch_size", value=[1, 2]),
     r"patch_size is a list \[1, 2\]", r"list of 3 values, each a whole number in \[1, 16\]"),
    ("context-tokens-bool", setter("model", "context_tokens", value=True), r"model\.context_tokens is true",
     r"whole number in \[1, 4096\]"),
    ("arch-unknown", setter("model", "arch", value="sdxl_unet"), r"unknown PVTT architecture 'sdxl_unet'",
     r"knows 'wan_concat' and 'wan_vace'"),
    ("stage-not-text", setter("stage", value=3), r"stage is 3", r"must be a string"),
    ("provenance-not-object", setter("provenance", value=[1]), r"provenance is a list \[1\]", r"must be an object"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_metadata_is_one_clear_error_before_anything_is_built(teacher, tmp_path, monkeypatch, case):
    _, edit, field, allowed = case
    path = edited(teacher, tmp_path, edit)
    built = []
    real_init = WanConcatPVTT.__init__
    monkeypatch.setattr(WanConcatPVTT, "__init__", lambda self, *a, **k: (built.append(a), real_init(self, *a, **k)))
    for load in (read_metadata, load_checkpoint):
        with pytest.raises(CheckpointError) as excinfo:
            load(path)
        message = str(excinfo.value)
        assert message.startswith("edited.safetensors"), message
        assert re.search(field, message), message
        assert re.search(allowed, message), message
        assert "Traceback" not in message
    assert built == []


def test_json_nested_100k_deep_is_refused(teacher, tmp_path):
    deep = '{"provenance": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = edited(teacher, tmp_path, lambda m: None, raw=deep)
    with pytest.raises(CheckpointError, match=r"edited\.safetensors: its PVTT metadata: its JSON is nested too deeply"):
        load_checkpoint(path)


def test_json_nested_beyond_the_depth_limit_is_refused(teacher, tmp_path):
    from pvtt_train.models.metadata_schema import MAX_JSON_DEPTH

    nested = [[]]
    for _ in range(MAX_JSON_DEPTH + 2):
        nested = [nested]
    path = edited(teacher, tmp_path, setter("provenance", value={"deep": nested}))
    with pytest.raises(CheckpointError, match=rf"nested more than {MAX_JSON_DEPTH} levels deep"):
        read_metadata(path)


def test_a_model_larger_than_free_memory_is_refused_before_allocating(teacher, tmp_path, monkeypatch):
    """Wan 14B's sizes are within range, but 40 layers 5120 wide do not fit 8 GB: refused with the numbers,
    counted on the meta device, while no real model is built (building it would need ~70 GB)."""
    from pvtt_train.models import model_budget

    wan_14b = {"num_layers": 40, "num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824,
               "text_dim": 4096, "freq_dim": 256}
    path = edited(teacher, tmp_path, lambda m: m["model"]["backbone_config"].update(wan_14b))
    monkeypatch.setattr(model_budget, "available_bytes", lambda device: 8 * 10 ** 9)
    devices = []
    real_build = ckpt.build_model
    monkeypatch.setattr(ckpt, "build_model", lambda config: devices.append(torch.get_default_device().type)
                        or real_build(config))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    message = str(excinfo.value)
    with torch.device("meta"):
        expected = WanConcatPVTT({**MICRO_BACKBONE, **wan_14b})
    needed = sum(t.numel() * t.element_size() for t in [*expected.parameters(), *expected.buffers()])
    assert needed > 50e9
    shown = float(re.search(r"need about ([\d.]+) GB, but only 8\.00 GB of memory is available", message).group(1))
    assert shown == pytest.approx(needed / 1e9, rel=0.01)
    assert message.startswith("edited.safetensors") and "free memory, load it on a larger machine" in message
    assert devices == ["meta"]


def test_a_model_that_fits_loads_and_is_counted_exactly(teacher, monkeypatch):
    from pvtt_train.models import model_budget

    seen = []
    real = model_budget.check_fits
    monkeypatch.setattr(ckpt, "check_fits", lambda needed, *a, **k: seen.append(needed) or real(needed, *a, **k))
    loaded = load_checkpoint(teacher)
    model = loaded.model
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    largest = max(t.numel() * t.element_size() for t in model.state_dict().values())
    assert seen == [weights + largest]


def test_shipped_and_written_metadata_pass_the_schema(teacher):
    """Everything PVTT writes itself must pass: the shipped models and a freshly written teacher."""
    from pvtt_train.models.metadata_schema import validate_metadata
    from pvtt_train.paths import SHIPPED_MODELS

    shipped = sorted(SHIPPED_MODELS.glob("pvtt_student_*step.safetensors"))
    shipped.append(SHIPPED_MODELS / "pvtt_teacher.safetensors")
    assert len(shipped) == 4
    for path in [*shipped, teacher]:
        meta = read_metadata(path)
        assert validate_metadata(meta, path.name) is meta


def test_validate_metadata_names_the_vace_fields():
    """A wan_vace config is checked against both diffusers configs and their consistency."""
    from _wan_fixtures import CLIP, TRANSFORMER_CONFIG, VAE_CONFIG

    from pvtt_train.models.metadata_schema import validate_metadata

    meta = {"format": "pvtt", "format_version": 1, "schedule": {"shift": 3.0, "num_train_timesteps": 1000},
            "sampler": {"kind": "euler_cfg", "steps": 4, "cfg": 2.0}, "video": dict(CLIP),
            "model": {"arch": "wan_vace", "transformer": dict(TRANSFORMER_CONFIG), "vae": dict(VAE_CONFIG),
                      "context_tokens": 3}}
    assert validate_metadata(meta, "vace.safetensors") is meta
    bad = [
        ({"transformer": {**TRANSFORMER_CONFIG, "vace_layers": [0, 2]}},
         r"vace_layers is a list \[0, 2\].*below num_layers \(2\)"),
        ({"transformer": {**TRANSFORMER_CONFIG, "vace_in_channels": 20}}, r"2\*4 \+ 4\*4 = 24 channels"),
        ({"vae": {**VAE_CONFIG, "latents_std": [1.0, 0.0, 1.0, 1.0]}}, r"latents_std holds 0"),
        ({"vae": {**VAE_CONFIG, "latents_mean": [0.0] * 3}}, r"latents_mean has 3 values; it needs z_dim = 4"),
        ({"vae": {**VAE_CONFIG, "temperal_downsample": [True]}}, r"temperal_downsample has 1 flags.*needs 2"),
        ({"vae": {**VAE_CONFIG, "patch_size": 2}}, r"vae\.patch_size is 2; it must be null"),
    ]
    for change, message in bad:
        wrong = {**meta, "model": {**meta["model"], **change}}
        with pytest.raises(CheckpointError, match=message):
            validate_metadata(wrong, "vace.safetensors")
    with pytest.raises(CheckpointError, match=r"video\.frames is 8, which does not fit the model.*use 5 or 9"):
        validate_metadata({**meta, "video": {**CLIP, "frames": 8}}, "vace.safetensors")
