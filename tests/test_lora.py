"""LoRA export of a student: exact at full rank, better with rank, diffusers keys, file round trip, refusals."""

import argparse
import copy
import pickle

import pytest
import torch
from _tiny import MICRO_BACKBONE, micro_teacher

import pvtt_train.models.lora as lora_mod
from pvtt_train.models.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from pvtt_train.models.lora import apply_lora, extract_lora, load_lora, save_lora
from pvtt_train.models.lora_cli import register
from pvtt_train.models.pvtt_model import Condition, WanConcatPVTT

FULL_RANK = 32  # the largest min(out, in) of the micro backbone's layers


def micro(seed=0, **overrides):
    torch.manual_seed(seed)
    return WanConcatPVTT({**MICRO_BACKBONE, **overrides}).eval()


def perturbed(model, seed=1, scale=0.02):
    """A 'student': every parameter moved by random noise (so every delta is full-rank)."""
    student = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * (p.abs().mean() + 0.1) * torch.randn(p.shape, generator=g))
    return student


def velocity(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 3, 8, 8, generator=g)
    cond = Condition(background=x, region=torch.ones(2, 1, 3, 8, 8),
                     features=torch.randn(2, 7, 3, 8, 8, generator=g), reference_slice=slice(4, 7))
    with torch.no_grad():
        return model.velocity(x, torch.tensor([0.3, 0.8]), cond)


@pytest.fixture(scope="module")
def pair():
    teacher = micro()
    return teacher, perturbed(teacher)


def test_full_rank_lora_reproduces_the_student(pair):
    teacher, student = pair
    state, report = extract_lora(teacher, student, FULL_RANK)
    merged = apply_lora(teacher, state)
    torch.testing.assert_close(velocity(merged), velocity(student), atol=1e-5, rtol=1e-5)
    assert report["retained_energy"] == pytest.approx(1.0)
    assert report["relative_error"] < 1e-6
    assert torch.equal(next(teacher.parameters()), next(micro().parameters()))  # merged into a copy


def test_error_decreases_with_rank(pair):
    teacher, student = pair
    target = velocity(student)
    weight_err, velocity_err = [], []
    for rank in (1, 4, 16, FULL_RANK):
        state, report = extract_lora(teacher, student, rank)
        weight_err.append(report["relative_error"])
        velocity_err.append(float((velocity(apply_lora(teacher, state)) - target).norm()))
        assert all(0 <= layer["relative_error"] <= 1 for layer in report["layers"].values())
    assert weight_err == sorted(weight_err, reverse=True) and weight_err[0] > 10 * weight_err[-1] + 1e-3
    assert velocity_err == sorted(velocity_err, reverse=True) and velocity_err[-1] < 1e-4


def test_keys_follow_the_diffusers_format(pair):
    teacher, student = pair
    rank = 4
    state, report = extract_lora(teacher, student, rank)
    assert state["transformer.blocks.0.attn1.to_q.lora_A.weight"].shape == (rank, 32)
    assert state["transformer.blocks.0.attn1.to_q.lora_B.weight"].shape == (32, rank)
    assert state["transformer.blocks.0.ffn.net.0.proj.lora_B.weight"].shape == (32, rank)
    # Conv3d patch embedding: A keeps the kernel, B is a 1x1x1 conv.
    assert state["transformer.patch_embedding.lora_A.weight"].shape == (rank, 10, 1, 2, 2)
    assert state["transformer.patch_embedding.lora_B.weight"].shape == (32, rank, 1, 1, 1)
    # Parameters that cannot be low-rank travel as full deltas, and the report lists them.
    for key in ("transformer.blocks.0.attn1.to_q.diff_b", "transformer.blocks.0.norm2.diff",
                "transformer.blocks.0.attn1.norm_q.diff", "transformer.scale_shift_table.diff",
                "transformer.blocks.0.scale_shift_table.diff", "pvtt.context.diff"):
        assert key in state and key in report["full_deltas"], key
    assert all(k.startswith(("transformer.", "pvtt.")) for k in state)
    assert "transformer.blocks.0.attn1.to_q" in report["layers"]
    # A layer smaller than the rank is zero-padded: every LoRA has exactly `rank` components.
    wide, _ = extract_lora(teacher, student, 64)
    assert {v.shape[0] for k, v in wide.items() if k.endswith("lora_A.weight")} == {64}


def test_unchanged_parameters_are_left_out(pair):
    teacher, _ = pair
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.backbone.blocks[0].attn1.to_v.weight.add_(0.01)  # rank 1 delta
    state, report = extract_lora(teacher, student, 2)
    assert set(state) == {"transformer.blocks.0.attn1.to_v.lora_A.weight",
                          "transformer.blocks.0.attn1.to_v.lora_B.weight"}
    assert report["layers"]["transformer.blocks.0.attn1.to_v"]["relative_error"] < 1e-6
    assert report["full_deltas"] == []


def test_round_trip_through_the_file(pair, tmp_path):
    teacher, student = pair
    state, report = extract_lora(teacher, student, 8)
    meta = {"rank": 8, "alpha": 8, "base_sha256": "a" * 64, "student_sha256": "b" * 64, "report": report}
    path = save_lora(tmp_path / "student.safetensors", state, meta)
    loaded, got = load_lora(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert got["rank"] == got["alpha"] == 8 and got["base_sha256"] == "a" * 64
    assert got["key_format"].startswith("diffusers-peft") and got["format"] == "pvtt_lora"
    assert got["report"]["relative_error"] == pytest.approx(report["relative_error"])
    torch.testing.assert_close(velocity(apply_lora(teacher, loaded)), velocity(apply_lora(teacher, state)))
    with pytest.raises(ValueError, match="base_sha256"):
        save_lora(tmp_path / "x.safetensors", state, {"rank": 8, "alpha": 8})


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["lora.pt", "lora.ckpt", "lora.bin", "lora.txt"])
def test_non_safetensors_refused_without_opening(tmp_path, monkeypatch, name):
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    opened = []
    monkeypatch.setattr(lora_mod, "safe_open", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(lora_mod, "load_file", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_lora(path)
    with pytest.raises(CheckpointError, match="safetensors"):
        save_lora(path, {}, {"rank": 1, "alpha": 1, "base_sha256": "", "student_sha256": ""})
    assert opened == [] and not marker.exists()


def test_wrong_base_is_refused(pair):
    teacher, _ = pair
    deeper = micro(num_layers=2)
    state, _ = extract_lora(deeper, perturbed(deeper), 4)
    with pytest.raises(CheckpointError, match=r"blocks\.1\."):  # a module the micro teacher lacks
        apply_lora(teacher, state)
    wider = micro(ffn_dim=48)
    state, _ = extract_lora(wider, perturbed(wider), 4)
    with pytest.raises(CheckpointError, match="do not fit"):
        apply_lora(teacher, state)
    with pytest.raises(CheckpointError, match="architecture"):
        extract_lora(teacher, wider, 4)
    with pytest.raises(CheckpointError, match="not one PVTT can merge"):
        apply_lora(teacher, {"transformer.blocks.0.attn1.to_q.alpha": torch.tensor(1.0)})


def test_export_lora_cli(tmp_path, capsys):
    teacher_path = micro_teacher(tmp_path / "teacher.safetensors")
    teacher = load_checkpoint(teacher_path)
    student_path = save_checkpoint(tmp_path / "student.safetensors", perturbed(teacher.model),
                                   {**teacher.metadata, "stage": "student_4step"})
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "loras" / "student_lora.safetensors"
    args = parser.parse_args(["export-lora", "--teacher", str(teacher_path), "--student", str(student_path),
                              "--rank", "4", "--out", str(out)])
    args.func(args)
    assert "retained energy" in capsys.readouterr().out
    state, meta = load_lora(out)
    assert meta["rank"] == meta["alpha"] == 4
    assert meta["base_sha256"] == file_sha256(teacher_path, length=64)
    assert meta["student_sha256"] == file_sha256(student_path, length=64)
    assert meta["model"]["arch"] == "wan_concat" and 0 < meta["report"]["retained_energy"] < 1
    apply_lora(teacher.model, state)
