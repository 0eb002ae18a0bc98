"""Property-based tests (hypothesis) of the mask and video operations every node relies on.

Each property holds for every input hypothesis draws: the input checks accept exactly the tensors
they should and return them unchanged (up to clamping), windows cover a clip of any length once,
masks stay binary through resizing, compositing never leaves 0..1 and never touches pixels outside
the grown mask, and an MP4 written at any size reads back with every frame and pixel row.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from _comfy_pack import PACKAGE
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

validation = importlib.import_module(f"{PACKAGE}.pvtt_train.validation")
errors = importlib.import_module(f"{PACKAGE}.pvtt_train.errors")
pipeline = importlib.import_module(f"{PACKAGE}.pvtt_train.pipeline")
composite = importlib.import_module(f"{PACKAGE}.pvtt_train.sampling.composite")
mask_tools = importlib.import_module(f"{PACKAGE}.nodes.mask_tools")
video_io = importlib.import_module(f"{PACKAGE}.pvtt_train.media.video_io")
conditioning = importlib.import_module(f"{PACKAGE}.pvtt_train.conditioning")

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(1, 12)
seeds = st.integers(0, 2**31 - 1)
any_density = st.floats(0.0, 1.0)


def tensors(shape, low=-0.3, high=1.3):
    return st.builds(lambda s: torch.rand(*shape, generator=torch.Generator().manual_seed(s)) * (high - low) + low,
                     seeds)


@st.composite
def clips(draw, low=0.0, high=1.0):
    f, h, w = draw(sizes), draw(sizes), draw(sizes)
    return draw(tensors((f, h, w, 3), low, high))


@st.composite
def masks(draw, frames=None, height=None, width=None, density=any_density):
    f, h, w = frames or draw(sizes), height or draw(sizes), width or draw(sizes)
    seed = draw(seeds)
    return (torch.rand(f, h, w, generator=torch.Generator().manual_seed(seed)) < draw(density)).float()


# --- the input checks -----------------------------------------------------------------------------

@FAST
@given(clips(low=-validation.RANGE_TOLERANCE, high=1 + validation.RANGE_TOLERANCE),
       st.sampled_from([torch.float16, torch.float32, torch.float64]))
def test_image_check_accepts_any_float_clip_within_tolerance_and_only_clamps(video, dtype):
    video = video.to(dtype)
    checked = validation.image_batch(video)
    assert checked.dtype == torch.float32 and checked.shape == video.shape
    assert torch.equal(checked, video.float().clamp(0, 1))


@FAST
@given(clips(), st.integers(0, 10_000), st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_image_check_refuses_any_clip_with_a_non_finite_value_and_names_its_frame(video, where, bad):
    index = where % video.numel()
    video.view(-1)[index] = bad
    frame = index // (video.shape[1] * video.shape[2] * 3)
    with pytest.raises(errors.InputError, match=rf"1 NaN or Inf values \(frames {frame}\)"):
        validation.image_batch(video)


@FAST
@given(clips(), st.floats(1.0 + validation.RANGE_TOLERANCE + 1e-3, 1e4))
def test_image_check_refuses_any_clip_past_the_tolerance_and_says_how_to_rescale(video, peak):
    video = video.clone()
    video.view(-1)[0] = peak
    with pytest.raises(errors.InputError, match=r"hold 0\.\.1; (it looks like 8-bit|rescale)"):
        validation.image_batch(video)


@FAST
@given(masks(), st.sampled_from(["bool", "uint8", "float64", "2d", "channel"]))
def test_mask_check_reads_every_mask_form_as_the_same_float_mask(mask, form):
    single = mask[:1]
    given_mask = {"bool": mask > 0.5, "uint8": mask.to(torch.uint8), "float64": mask.double(), "2d": single[0],
                  "channel": mask[..., None]}[form]
    want = single if form == "2d" else mask
    assert torch.equal(validation.mask_frames(given_mask), want)


@FAST
@given(masks())
def test_coverage_check_refuses_exactly_the_empty_and_the_all_white_masks(mask):
    product = mask > 0.5
    if product.any() and not product.all():
        validation.check_mask_coverage(mask)
    else:
        with pytest.raises(errors.InputError, match="empty|white on every pixel"):
            validation.check_mask_coverage(mask)


# --- windows and resizing ---------------------------------------------------------------------------

@FAST
@given(st.integers(1, 400), st.integers(1, 81))
def test_frame_windows_cover_every_frame_with_full_windows(frames, window):
    windows = pipeline.frame_windows(frames, window)
    covered = sorted({i for start, end in windows for i in range(start, end)})
    assert covered == list(range(frames))
    assert all(end - start == min(window, frames) for start, end in windows)
    assert windows[0][0] == 0 and windows[-1][1] == frames
    assert len(windows) == max(1, math.ceil(frames / window))


@FAST
@given(clips(), st.integers(1, 24), st.integers(1, 24))
def test_resize_video_keeps_frames_and_range(video, height, width):
    out = pipeline.resize_video(video, height, width)
    assert out.shape == (video.shape[0], height, width, 3)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


@FAST
@given(masks(frames=2), st.integers(1, 24), st.integers(1, 24))
def test_resized_masks_stay_black_and_white(mask, height, width):
    out = mask_tools.resize_mask(mask, height, width)
    assert out.shape == (2, height, width)
    assert set(out.unique().tolist()) <= {0.0, 1.0}


@FAST
@given(masks(frames=1, height=16, width=16))
def test_resizing_a_mask_to_its_own_size_is_the_identity(mask):
    assert torch.equal(mask_tools.resize_mask(mask, 16, 16), mask)


# --- compositing -------------------------------------------------------------------------------------

@FAST
@given(st.integers(0, 2**31 - 1), st.integers(0, 6), st.floats(0.0, 4.0))
def test_composite_stays_in_0_1_and_keeps_the_template_outside_the_grown_mask(seed, dilate, feather):
    g = torch.Generator().manual_seed(seed)
    generated, template = torch.rand(2, 12, 14, 3, generator=g), torch.rand(2, 12, 14, 3, generator=g)
    mask = (torch.rand(2, 12, 14, generator=g) < 0.1).float()
    soft = composite.soft_mask(mask, dilate, feather)
    out = composite.blend(generated, template, soft.expand(2, -1, -1))
    assert out.min() >= 0 and out.max() <= 1
    assert soft.min() >= 0 and soft.max() <= 1
    assert torch.all(soft >= mask - 1e-6)  # the product region is always fully generated
    untouched = soft.expand(2, -1, -1) == 0
    assert torch.equal(out[untouched], template[untouched])


@FAST
@given(masks(frames=3, height=12, width=12, density=st.floats(0.05, 0.6)), st.integers(0, 2**31 - 1))
def test_aligned_paste_is_zero_outside_the_mask_and_in_0_1(mask, seed):
    rng = np.random.default_rng(seed)
    photo = np.full((16, 16, 3), 0.95, np.float32)
    photo[4:12, 5:11] = rng.random(3)
    paste = conditioning.aligned_paste(photo, mask.numpy())
    assert paste.shape == (3, 12, 12, 3)
    assert np.all(paste[mask.numpy() <= 0.5] == 0)
    assert paste.min() >= 0 and paste.max() <= 1


# --- files -------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_mp4_of_any_size_reads_back_with_every_frame_and_pixel_row(tmp_path_factory, frames, height, width, seed):
    assume(height * width >= 1)
    folder = tmp_path_factory.mktemp("mp4")
    clip = np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    video_io.write_mp4(folder / "clip.mp4", clip, 8.0)
    back, fps = video_io.read_video(folder / "clip.mp4")
    assert back.shape == (frames, height + height % 2, width + width % 2, 3)
    assert fps == pytest.approx(8.0)
