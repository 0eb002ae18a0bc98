"""The designer-facing pipeline: input checks, frame windows, and transfer() end to end on a tiny model."""

import pytest
import torch

from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
from pvtt_train.models.pvtt_model import WanConcatPVTT
from pvtt_train.pipeline import InputError, check_inputs, frame_windows, transfer

from _tiny import MICRO_BACKBONE as TINY

META = {
    "stage": "test",
    "schedule": {"shift": 3.0, "num_train_timesteps": 1000},
    "sampler": {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]},
    "video": {"frames": 9, "height": 16, "width": 16},
}


# ---------------------------------------------------------------- frame windows

@pytest.mark.parametrize("frames,window,expected", [
    (9, 9, [(0, 9)]),
    (5, 9, [(0, 5)]),
    (18, 9, [(0, 9), (9, 18)]),
    (11, 9, [(0, 9), (2, 11)]),
    (20, 9, [(0, 9), (9, 18), (11, 20)]),
])
def test_frame_windows_examples(frames, window, expected):
    assert frame_windows(frames, window) == expected


def test_frame_windows_cover_everything_end_aligned():
    for window in range(1, 10):
        for frames in range(1, 40):
            ws = frame_windows(frames, window)
            covered = set()
            for start, end in ws:
                assert 0 <= start < end <= frames
                assert end - start == min(window, frames)
                covered.update(range(start, end))
            assert covered == set(range(frames)), (frames, window)
            assert ws[-1][1] == frames
            assert [s for s, _ in ws] == sorted({s for s, _ in ws})  # increasing, no duplicates


# ---------------------------------------------------------------- input checks

def good(frames=4, h=12, w=10):
    template = torch.rand(frames, h, w, 3)
    mask = torch.zeros(frames, h, w)
    mask[:, 3:8, 2:6] = 1
    reference = torch.rand(14, 14, 3)
    return template, mask, reference


def test_check_inputs_accepts_good_inputs_and_a_single_mask():
    t, m, r = good()
    check_inputs(t, m, r)
    check_inputs(t, m[:1], r)


def test_frame_count_mismatch():
    t, m, r = good(frames=4)
    with pytest.raises(InputError, match="mask has 3 frames but the template video has 4"):
        check_inputs(t, m[:3], r)


def test_size_mismatch():
    t, m, r = good(h=12, w=10)
    with pytest.raises(InputError, match=r"mask is 9x12 but the template video is 10x12 \(width x height\)"):
        check_inputs(t, m[:, :, :9], r)


@pytest.mark.parametrize("which,name", [(0, "template video"), (1, "mask"), (2, "product image")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf(which, name, bad):
    inputs = list(good())
    inputs[which] = inputs[which].clone()
    inputs[which].view(-1)[5] = bad
    with pytest.raises(InputError, match=rf"{name} contains 1 NaN or Inf values"):
        check_inputs(*inputs)


def test_empty_mask():
    t, m, r = good()
    with pytest.raises(InputError, match="mask is empty"):
        check_inputs(t, m * 0.4, r)


@pytest.mark.parametrize("which,shape,message", [
    (0, (12, 10, 3), "template video must be an IMAGE batch"),
    (0, (4, 12, 10, 4), r"template video has 4 channels \(RGBA\)"),
    (0, (4, 12, 10), "which is a MASK"),
    (1, (4, 12, 10, 3), "which is an IMAGE, not a MASK"),
    (1, (2, 4, 12, 10), "mask must be a MASK"),
    (2, (14, 14), "product image must be an IMAGE batch"),
    (2, (0, 14, 14, 3), "product image has 0 frames"),
])
def test_wrong_ranks(which, shape, message):
    inputs = list(good())
    inputs[which] = torch.rand(shape)
    with pytest.raises(InputError, match=message) as err:
        check_inputs(*inputs)
    assert str(tuple(shape)) in str(err.value)  # the message shows what was given


def test_zero_frames():
    t, m, r = good()
    with pytest.raises(InputError, match="0 frames"):
        check_inputs(t[:0], m[:0], r)


# ---------------------------------------------------------------- transfer

@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", WanConcatPVTT(TINY), META)
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def inputs():
    """11 frames at 24x20: another length and size than the checkpoint's 9 frames at 16x16."""
    ex = SyntheticVideoGenerator(SyntheticConfig(frames=11, height=24, width=20)).example(5)
    return torch.from_numpy(ex.template), torch.from_numpy(ex.mask), torch.from_numpy(ex.reference)


@pytest.fixture(scope="module")
def out_seed0(loaded, inputs):
    return transfer(loaded, *inputs, seed=0)


def test_transfer_returns_input_shape_in_range(out_seed0, inputs):
    assert out_seed0.shape == inputs[0].shape == (11, 24, 20, 3)
    assert out_seed0.dtype == torch.float32
    assert torch.isfinite(out_seed0).all()
    assert out_seed0.min() >= 0 and out_seed0.max() <= 1
    assert out_seed0.std() > 0.01  # not a constant image


def test_transfer_is_deterministic_for_a_seed(loaded, inputs, out_seed0):
    assert torch.equal(transfer(loaded, *inputs, seed=0), out_seed0)


def test_transfer_differs_across_seeds(loaded, inputs, out_seed0):
    assert (transfer(loaded, *inputs, seed=1) - out_seed0).abs().mean() > 1e-3


def test_transfer_callback_counts_all_windows(loaded, inputs):
    calls = []
    transfer(loaded, *inputs, seed=0, callback=lambda i, n, x0: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 windows x 2 steps


def test_transfer_accepts_a_single_mask_for_all_frames(loaded, inputs):
    template, mask, reference = inputs
    out = transfer(loaded, template[:3], mask[:1], reference, seed=0)
    assert out.shape == (3, 24, 20, 3)


def test_transfer_checks_inputs_first(loaded, inputs):
    template, mask, reference = inputs
    with pytest.raises(InputError, match="mask is empty"):
        transfer(loaded, template, torch.zeros_like(mask), reference)
