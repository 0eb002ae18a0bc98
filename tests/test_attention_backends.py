"""Attention backend selection, fallback and CPU parity against math attention."""

import logging

import pytest
import torch

from pvtt_accel.attention import BackendUnavailable, apply_attention_backend, choose_backend

from _tiny import load_micro_teacher

CPU = torch.device("cpu")


def test_auto_picks_sdpa_on_cpu():
    assert choose_backend("auto", CPU).used == "sdpa"


@pytest.mark.parametrize("name", ["flash", "flash3", "sage", "sdpa_flash"])
def test_gpu_backends_fall_back_to_sdpa_on_cpu_with_a_reason(name, caplog):
    with caplog.at_level(logging.WARNING, logger="PVTT"):
        choice = choose_backend(name, CPU)
    assert choice.used == "sdpa"
    assert "CUDA" in choice.reason
    assert "falling back to sdpa" in caplog.text


def test_strict_mode_raises_instead_of_falling_back():
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        choose_backend("flash", CPU, strict=True)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="choose one of auto, sdpa"):
        choose_backend("fast", CPU)


def test_sdpa_matches_math_attention_on_cpu(tmp_path):
    teacher = load_micro_teacher(tmp_path)
    model = teacher.model
    torch.manual_seed(0)
    for p in model.parameters():  # random weights large enough that attention is not uniform
        p.data.normal_(0, 0.2)
    x = torch.randn(1, 3, 9, 16, 16)
    cond = model.condition(torch.rand(1, 9, 16, 16, 3), (torch.rand(1, 9, 16, 16) > 0.7).float(),
                           torch.rand(1, 16, 16, 3))
    outs = {}
    for name in ("math", "sdpa"):
        assert apply_attention_backend(model.backbone, name).used == name
        outs[name] = model.velocity(x, torch.tensor([0.5]), cond)
    assert outs["math"].abs().max() > 0.1
    torch.testing.assert_close(outs["sdpa"], outs["math"], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: GPU attention kernels cannot run on CPU")
def test_sdpa_flash_matches_math_on_gpu(tmp_path):
    model = load_micro_teacher(tmp_path).model.cuda().half()
    x = torch.randn(1, 3, 9, 16, 16, device="cuda", dtype=torch.half)
    cond = model.condition(torch.rand(1, 9, 16, 16, 3, device="cuda"), torch.ones(1, 9, 16, 16, device="cuda"),
                           torch.rand(1, 16, 16, 3, device="cuda")).to("cuda", torch.half)
    apply_attention_backend(model.backbone, "math")
    ref = model.velocity(x, torch.tensor([0.5], device="cuda"), cond)
    apply_attention_backend(model.backbone, "sdpa_flash", strict=True)
    torch.testing.assert_close(model.velocity(x, torch.tensor([0.5], device="cuda"), cond), ref,
                               rtol=2e-2, atol=2e-2)
