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


def test_a_paste_channel_model_is_given_the_full_size_warp_shrunk_to_its_working_size(loaded, monkeypatch):
    """At a designer's size the model sees the same warp the detail layer uses, shrunk, as in training
    with ``paste="supersampled_warp"`` (not a paste it fits at 16x16 itself)."""
    from pvtt_train.aligned_warp import aligned_warp
    from pvtt_train.detail_transfer import working_size_paste
    from pvtt_train.media.resize import resize_video

    ex = SyntheticVideoGenerator(SyntheticConfig(frames=9, height=64, width=64, product_size=(20.0, 30.0))).example(3)
    template, mask, reference = (torch.from_numpy(a) for a in (ex.template, ex.mask, ex.reference))
    seen = []
    original = loaded.model.condition_from_paste
    monkeypatch.setattr(loaded.model, "condition_from_paste",
                        lambda t, m, p: seen.append(p[0]) or original(t, m, p), raising=False)
    transfer(loaded, template, mask, reference, seed=0, fit="stretch")
    small = working_size_paste(torch.from_numpy(aligned_warp(ex.reference, ex.mask)), mask,
                               lambda clip: resize_video(clip, 16, 16))
    msk = (resize_video(mask[..., None], 16, 16)[..., 0] > 0.5).float()
    assert len(seen) == 1 and torch.allclose(seen[0], small * msk[..., None], atol=1e-6)


def test_each_window_gets_the_photo_at_the_light_of_its_first_frame(loaded, monkeypatch):
    """The model takes a window's first frame as its clip's start (the light the photo matches), so
    a later window's paste is scaled by how the scene's light has changed since frame 0."""
    ex = SyntheticVideoGenerator(SyntheticConfig(frames=15)).example(4)
    gains = torch.linspace(1.0, 0.7, 15)  # the scene darkens over the clip
    template = (torch.from_numpy(ex.template) * gains.view(-1, 1, 1, 1)).clamp(0, 1)
    mask, reference = torch.from_numpy(ex.mask), torch.from_numpy(ex.reference)
    seen = []
    original = loaded.model.condition_from_paste
    monkeypatch.setattr(loaded.model, "condition_from_paste",
                        lambda t, m, p: seen.append(p[0]) or original(t, m, p), raising=False)
    transfer(loaded, template, mask, reference, seed=0, window_overlap=3)
    assert len(seen) == 2  # windows 0-8 and 6-14
    from pvtt_train.conditioning import aligned_paste
    from pvtt_train.light_match import clip_light_gain

    unlit = torch.from_numpy(aligned_paste(ex.reference, ex.mask))
    measured = clip_light_gain(template, mask)
    own = clip_light_gain(torch.from_numpy(ex.template), mask)  # the generator's own light drift
    assert abs(float(measured[6] / own[6]) - float(gains[6])) < 1e-3
    assert torch.allclose(seen[0], unlit[:9], atol=1e-6)  # the first window starts at the clip's light
    assert torch.allclose(seen[1], (unlit[6:] * measured[6]).clamp(0, 1), atol=1e-6)


def test_a_model_trained_on_lit_pastes_gets_every_frame_at_its_own_light(loaded, monkeypatch):
    from pvtt_train.conditioning import aligned_paste
    from pvtt_train.light_match import clip_light_gain

    ex = SyntheticVideoGenerator(SyntheticConfig(frames=9)).example(4)
    gains = torch.linspace(1.0, 0.7, 9)
    template = (torch.from_numpy(ex.template) * gains.view(-1, 1, 1, 1)).clamp(0, 1)
    mask, reference = torch.from_numpy(ex.mask), torch.from_numpy(ex.reference)
    monkeypatch.setitem(loaded.metadata, "provenance", {"data": {"paste": "supersampled_warp_lit"}})
    seen = []
    original = loaded.model.condition_from_paste
    monkeypatch.setattr(loaded.model, "condition_from_paste",
                        lambda t, m, p: seen.append(p[0]) or original(t, m, p), raising=False)
    transfer(loaded, template, mask, reference, seed=0)
    unlit = torch.from_numpy(aligned_paste(ex.reference, ex.mask))
    light = clip_light_gain(template, mask)
    assert torch.allclose(seen[0], (unlit * light.view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-6)


def test_a_paste_channel_model_that_changes_nothing_returns_the_full_size_paste_at_the_template_light(tmp_path):
    """At a designer's size the model's output is a correction of the paste it was given: a paste-residual
    model that predicts no residual gives back the full-size warp, lit as its paste was, to the pixel."""
    from pvtt_train.aligned_warp import aligned_warp
    from pvtt_train.light_match import clip_light_gain
    from pvtt_train.media.resize import resize_video
    from pvtt_train.models.paste_residual import zero_output

    torch.manual_seed(0)
    model = WanConcatPVTT(TINY, prediction="paste_residual")
    zero_output(model.backbone)
    ex = SyntheticVideoGenerator(SyntheticConfig(frames=9, height=64, width=64, product_size=(20.0, 30.0))).example(3)
    gains = torch.linspace(1.0, 0.8, 9)
    template = (torch.from_numpy(ex.template) * gains.view(-1, 1, 1, 1)).clamp(0, 1)
    mask, reference = torch.from_numpy(ex.mask), torch.from_numpy(ex.reference)
    meta = {**META, "provenance": {"data": {"paste": "supersampled_warp_lit"}}}
    with_paste = load_checkpoint(save_checkpoint(tmp_path / "zero.safetensors", model, meta))
    out = transfer(with_paste, template, mask, reference, seed=0, fit="stretch")
    small_mask = (resize_video(mask[..., None], 16, 16)[..., 0] > 0.5).float()
    light = clip_light_gain(resize_video(template, 16, 16), small_mask)
    lit = (torch.from_numpy(aligned_warp(ex.reference, ex.mask)) * light.view(-1, 1, 1, 1)).clamp(0, 1)
    inside = mask[..., None].expand_as(out) > 0.5
    assert torch.allclose(out[inside], lit[inside], atol=1e-5)
    own = clip_light_gain(resize_video(torch.from_numpy(ex.template), 16, 16), small_mask)  # the generator's drift
    assert abs(float(light[-1] / own[-1]) - 0.8) < 0.02  # the paste followed the darkening
