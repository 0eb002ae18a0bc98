"""Self-describing safetensors checkpoints: round trip, atomic writes, refusals with helpful errors."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import pvtt_train.models.checkpoint as ckpt
from pvtt_train.models.checkpoint import (CheckpointError, load_checkpoint, read_metadata, save_checkpoint,
                                          write_atomic)
from pvtt_train.models.pvtt_model import Condition, WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule

from _tiny import MICRO_BACKBONE as TINY

META = {
    "stage": "test",
    "schedule": {"shift": 3.0, "num_train_timesteps": 1000},
    "sampler": {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]},
    "video": {"frames": 3, "height": 8, "width": 8},
    "provenance": {"note": "unit test", "steps": 0},
}


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = WanConcatPVTT({**TINY, **overrides})
    with torch.no_grad():  # the context starts at zero; make it count in the round trip
        model.context.normal_()
    return model


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, META)
    return model, path


def raw_save(path, tensors, meta: dict | None):
    """A safetensors file with arbitrary PVTT metadata (or none)."""
    save_file(tensors, str(path), metadata=None if meta is None else {"pvtt": json.dumps(meta)})
    return path


def test_round_trip_weights_and_outputs(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, WanConcatPVTT)
    ref, got = model.state_dict(), loaded.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 3, 8, 8, generator=g)
    cond = Condition(background=x, region=torch.ones(1, 1, 3, 8, 8), features=torch.randn(1, 7, 3, 8, 8, generator=g),
                     reference_slice=slice(4, 7))
    with torch.no_grad():
        assert torch.equal(model.eval().velocity(x, torch.tensor([0.5]), cond),
                           loaded.model.velocity(x, torch.tensor([0.5]), cond))
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_round_trip_metadata(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    meta = loaded.metadata
    for key in ("stage", "schedule", "sampler", "video", "provenance"):
        assert meta[key] == META[key], key
    assert meta["model"] == json.loads(json.dumps(model.config()))
    assert meta["model"]["arch"] == "wan_concat" and meta["model"]["backbone_config"]["ffn_dim"] == 32
    assert meta["format"] == "pvtt" and meta["format_version"] == 1
    assert loaded.schedule == FlowSchedule(shift=3.0)
    assert loaded.sampler == META["sampler"] and loaded.video == META["video"]
    assert read_metadata(path) == meta  # metadata alone, without weights


def test_save_requires_core_metadata(tmp_path):
    with pytest.raises(ValueError, match="'video'"):
        save_checkpoint(tmp_path / "m.safetensors", tiny_model(), {k: v for k, v in META.items() if k != "video"})
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_failure_keeps_old_file_and_leaves_no_temp(saved, tmp_path):
    model, path = saved
    before = path.read_bytes()

    def failing_write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, failing_write)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    load_checkpoint(path)  # still a valid checkpoint


def test_save_failure_keeps_old_checkpoint(saved, tmp_path, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 100)
        raise KeyboardInterrupt  # a user interrupt is not an Exception, but must clean up as well

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_model(seed=1), META)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_write_atomic_replaces_on_success(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    write_atomic(path, lambda tmp: open(tmp, "wb").write(b"one"))
    write_atomic(path, lambda tmp: open(tmp, "wb").write(b"two"))
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


class _Payload:
    """Unpickling this creates a directory: the side effect that must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "model.ckpt", "model.pth", "MODEL.PT", "model.pkl"])
def test_pickle_files_refused_without_opening(tmp_path, monkeypatch, name):
    # The payload is live: loading a copy of it does create its marker.
    probe = tmp_path / "probe_marker"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.is_dir()

    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    opened = []
    monkeypatch.setattr(ckpt, "safe_open", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    for fn in (read_metadata, load_checkpoint):
        with pytest.raises(CheckpointError, match="pickle") as err:
            fn(path)
        assert "safetensors" in str(err.value)
    assert not marker.exists()
    assert opened == []


def test_pickle_renamed_to_safetensors_is_not_unpickled(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "sneaky.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.99, 100, 4])
def test_truncated_checkpoint_gives_helpful_error(saved, tmp_path, keep):
    _, path = saved
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(bad)
    assert "cut.safetensors" in str(err.value)


def test_garbage_file_gives_helpful_error(tmp_path):
    bad = tmp_path / "noise.safetensors"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="noise.safetensors is not a readable safetensors file"):
        read_metadata(bad)


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="expected a .safetensors file"):
        load_checkpoint(tmp_path / "m.onnx")


def test_safetensors_without_pvtt_metadata(tmp_path):
    path = raw_save(tmp_path / "plain.safetensors", tiny_model().state_dict(), None)
    with pytest.raises(CheckpointError, match="no PVTT metadata"):
        load_checkpoint(path)


def test_invalid_metadata_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"pvtt": "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_metadata(path)


def test_newer_format_refused(tmp_path):
    meta = {**META, "format": "pvtt", "format_version": 99, "model": tiny_model().config()}
    path = raw_save(tmp_path / "future.safetensors", tiny_model().state_dict(), meta)
    with pytest.raises(CheckpointError, match="newer PVTT"):
        load_checkpoint(path)


def test_unknown_arch_gives_clear_error(tmp_path):
    meta = {**META, "format": "pvtt", "format_version": 1, "model": {"arch": "mystery_net"}}
    path = raw_save(tmp_path / "mystery.safetensors", {"w": torch.zeros(2)}, meta)
    with pytest.raises(ValueError, match="unknown PVTT architecture 'mystery_net'.*wan_concat"):
        load_checkpoint(path)


@pytest.mark.parametrize("model_meta", [{"arch": "mystery_net"}, None])
def test_unusable_model_metadata_is_a_checkpoint_error(tmp_path, model_meta):
    meta = {**META, "format": "pvtt", "format_version": 1}
    if model_meta is not None:
        meta["model"] = model_meta
    path = raw_save(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, meta)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_weights_missing_or_extra_keys_refused(tmp_path):
    model = tiny_model()
    meta = {**META, "format": "pvtt", "format_version": 1, "model": model.config()}
    state = dict(model.state_dict())
    state.pop("context")
    state["extra.weight"] = torch.zeros(3)
    path = raw_save(tmp_path / "edited.safetensors", state, meta)
    with pytest.raises(CheckpointError, match="do not match the architecture") as err:
        load_checkpoint(path)
    assert "context" in str(err.value) and "extra.weight" in str(err.value)


def test_weights_of_wrong_shape_refused(tmp_path):
    small = tiny_model()  # ffn 32
    meta = {**META, "format": "pvtt", "format_version": 1, "model": tiny_model(ffn_dim=64).config()}
    path = raw_save(tmp_path / "shapes.safetensors", dict(small.state_dict()), meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


def test_saved_model_config_wins_over_stale_metadata(tmp_path):
    teacher = load_checkpoint(save_checkpoint(tmp_path / "t.safetensors", tiny_model(), META))
    student = tiny_model(seed=1, ffn_dim=64)
    path = save_checkpoint(tmp_path / "s.safetensors", student, {**teacher.metadata, "stage": "distill"})
    loaded = load_checkpoint(path)
    assert loaded.metadata["model"]["backbone_config"]["ffn_dim"] == 64
    assert loaded.metadata["stage"] == "distill"
