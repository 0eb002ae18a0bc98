"""The PVTT masking tools, run as ComfyUI calls them: exact pixel counts, colours and error texts."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from _comfy_pack import PACKAGE, load_pack
from hypothesis import given, settings
from hypothesis import strategies as st

nodes = load_pack().NODE_CLASS_MAPPINGS
InputError = importlib.import_module(f"{PACKAGE}.pvtt_train.errors").InputError
composite = importlib.import_module(f"{PACKAGE}.pvtt_train.sampling.composite")

PROPERTY = settings(max_examples=30, deadline=None)
#: feather_px as the widget gives it: multiples of its 0.5 step.
FEATHERS = st.integers(0, 8).map(lambda n: n / 2)


def run(node_id: str, **inputs):
    """Execute a node as ComfyUI does: a fresh instance, its FUNCTION called with keyword inputs."""
    cls = nodes[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def grey_video(frames=3, height=32, width=32):
    return torch.full((frames, height, width, 3), 0.5)


def square(side=8, top=12, left=12, size=32, frames=1):
    """[frames, size, size] mask with a white side x side square at (top, left)."""
    mask = torch.zeros(frames, size, size)
    mask[:, top:top + side, left:left + side] = 1
    return mask


def random_mask(seed: int, frames=2, height=24, width=24, density=0.1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(frames, height, width, generator=g) < density).float()


def grow(mask, grow_px, feather_px=0.0):
    return run("PVTTMaskGrow", mask=mask, grow_px=grow_px, feather_px=feather_px)[0]


def match(video, mask, mode="resize"):
    return run("PVTTMatchMask", video=video, mask=mask, mode=mode)[0]


# --- PVTT Mask From Box -------------------------------------------------------------------------

def test_box_mask_covers_exactly_the_boxed_pixels_on_every_frame():
    mask = run("PVTTMaskFromBox", video=grey_video(3, 40, 80), x=0.25, y=0.5, width=0.5, height=0.25,
               shape="box")[0]
    expected = torch.zeros(40, 80)
    expected[20:30, 20:60] = 1  # rows 0.5..0.75 of 40, columns 0.25..0.75 of 80
    assert mask.shape == (3, 40, 80)
    assert all(torch.equal(frame, expected) for frame in mask)


def test_ellipse_covers_a_quarter_pi_of_its_box():
    mask = run("PVTTMaskFromBox", video=grey_video(1, 200, 200), x=0.1, y=0.1, width=0.8, height=0.8,
               shape="ellipse")[0]
    box_area = 160 * 160
    assert float(mask.sum()) == pytest.approx(math.pi / 4 * box_area, rel=0.01)
    assert float(mask[0, :20].sum()) == 0 and float(mask[0, 100, 21:179].min()) == 1


def test_box_reaching_past_the_frame_edge_is_refused():
    with pytest.raises(InputError, match="reaches outside the frame.*x \\+ width <= 1"):
        run("PVTTMaskFromBox", video=grey_video(), x=0.6, y=0.1, width=0.5, height=0.5, shape="box")


def test_box_of_zero_width_is_refused():
    with pytest.raises(InputError, match="the box is empty"):
        run("PVTTMaskFromBox", video=grey_video(), x=0.25, y=0.25, width=0.0, height=0.5, shape="box")


def test_box_between_pixel_centres_is_refused():
    # The centres of a 10 px row sit at 0.05, 0.15, ...: none falls in [0.3, 0.31).
    with pytest.raises(InputError, match="covers no pixel of the 10x10 frame"):
        run("PVTTMaskFromBox", video=grey_video(1, 10, 10), x=0.3, y=0.25, width=0.01, height=0.5, shape="box")


# --- PVTT Mask Grow/Shrink/Feather --------------------------------------------------------------

def test_grow_widens_a_square_by_twice_grow_px():
    grown = grow(square(side=8, top=12, left=12), 3)
    assert torch.equal(grown, square(side=14, top=9, left=9))


def test_shrink_narrows_a_square_by_twice_grow_px():
    shrunk = grow(square(side=8, top=12, left=12), -2)
    assert torch.equal(shrunk, square(side=4, top=14, left=14))


def test_shrink_undoes_grow_on_a_square():
    mask = square(side=8, top=12, left=12)
    assert torch.equal(grow(grow(mask, 3), -3), mask)


def test_grow_equals_background_preserve_dilation():
    mask = random_mask(0, frames=3)
    assert torch.equal(grow(mask, 4), composite.soft_mask(mask, 4, 0.0))


def test_shrink_keeps_a_product_cut_off_by_the_frame_edge_on_the_edge():
    shrunk = grow(square(side=8, top=0, left=0), -2)
    assert torch.equal(shrunk, square(side=6, top=0, left=0))


def test_feather_stays_in_0_1_and_white_inside():
    soft = grow(square(side=12, top=10, left=10), 0, feather_px=2.0)
    assert float(soft.min()) == 0 and float(soft.max()) == 1
    assert torch.equal(soft[0, 10:22, 10:22], torch.ones(12, 12))  # the mask itself stays fully opaque
    assert 0 < float(soft[0, 16, 22]) < 1 and float(soft[0, 16, 31]) == 0  # soft just outside, clear far away


def test_grow_accepts_an_unbatched_mask():
    assert grow(square()[0], 1).shape == (1, 32, 32)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), grow_px=st.integers(-8, 8), feather_px=FEATHERS)
def test_grow_output_stays_in_0_1(seed, grow_px, feather_px):
    out = grow(random_mask(seed), grow_px, feather_px)
    assert out.shape == (2, 24, 24) and float(out.min()) >= 0 and float(out.max()) <= 1


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), low=st.integers(-8, 8), high=st.integers(-8, 8),
       feather_px=FEATHERS)
def test_grow_area_is_monotonic_in_grow_px(seed, low, high, feather_px):
    low, high = sorted((low, high))
    mask = random_mask(seed)
    assert float(grow(mask, low, feather_px).sum()) <= float(grow(mask, high, feather_px).sum()) + 1e-3


# --- PVTT Mask Overlay Preview ------------------------------------------------------------------

def test_preview_at_full_opacity_paints_the_mask_in_the_colour():
    preview = run("PVTTMaskPreview", video=grey_video(), mask=square(frames=3), color="red", opacity=1.0)[0]
    assert preview.shape == (3, 32, 32, 3)
    assert preview[:, 15, 15].tolist() == [[1.0, 0.0, 0.0]] * 3
    assert preview[:, 0, 0].tolist() == [[0.5, 0.5, 0.5]] * 3


def test_preview_at_half_opacity_mixes_colour_and_video_inside_only():
    preview = run("PVTTMaskPreview", video=grey_video(), mask=square(), color="blue", opacity=0.5)[0]
    assert preview[:, 15, 15].tolist() == [[0.25, 0.25, 0.75]] * 3
    assert preview[:, 0, 0].tolist() == [[0.5, 0.5, 0.5]] * 3


def test_preview_at_zero_opacity_is_the_video():
    video = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    preview = run("PVTTMaskPreview", video=video, mask=square(frames=2), color="white", opacity=0.0)[0]
    assert torch.equal(preview, video)


def test_preview_of_a_mask_of_another_size_points_to_match_mask():
    with pytest.raises(InputError, match="mask is 16x16 but the video is 32x32.*PVTT Match Mask to Video"):
        run("PVTTMaskPreview", video=grey_video(), mask=square(side=4, top=0, left=0, size=16), color="red",
            opacity=0.5)


# --- PVTT Match Mask to Video -------------------------------------------------------------------

@pytest.mark.parametrize("loaded", [square(), square()[0]], ids=["1xHxW", "HxW"])
def test_match_repeats_a_load_image_mask_on_every_frame(loaded):
    matched = match(grey_video(5), loaded)
    assert matched.shape == (5, 32, 32) and all(torch.equal(frame, square()[0]) for frame in matched)


def test_match_resizes_a_2x_mask_to_its_nearest_downscale():
    small = random_mask(2, frames=2, height=20, width=30, density=0.4)
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    nearest = torch.nn.functional.interpolate(big[:, None], size=(20, 30), mode="nearest")[:, 0]
    matched = match(grey_video(2, 20, 30), big)
    assert torch.equal(matched, nearest) and torch.equal(matched, small)


def test_match_upscales_a_half_size_mask_without_grey_edges():
    small = random_mask(3, frames=1, height=10, width=15, density=0.4)
    matched = match(grey_video(1, 20, 30), small)
    assert torch.equal(matched, small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))


def test_match_keeps_a_soft_mask_of_the_right_size():
    soft = grow(square(), 0, feather_px=2.0)
    assert torch.equal(match(grey_video(1), soft), soft)


def test_match_refuses_another_frame_count():
    with pytest.raises(InputError, match="mask has 4 frames but the video has 9; masks are never trimmed"):
        match(grey_video(9), square(frames=4))


def test_match_in_error_mode_names_both_sizes():
    mask = torch.ones(1, 48, 64)
    with pytest.raises(InputError, match="mask is 64x48 but the video is 32x24 \\(width x height\\)"):
        match(grey_video(1, 24, 32), mask, mode="error")


def test_match_refuses_nan_values():
    mask = square()
    mask[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="mask contains 1 NaN or Inf values"):
        match(grey_video(), mask)


def test_match_refuses_an_empty_mask():
    with pytest.raises(InputError, match="mask is empty \\(no pixel above 0.5\\)"):
        match(grey_video(), torch.zeros(1, 32, 32))


def test_match_refuses_a_mask_that_vanishes_when_shrunk():
    dot = torch.zeros(1, 64, 64)
    dot[0, 30, 30] = 1
    with pytest.raises(InputError, match="vanished when resized from 64x64 to 16x16"):
        match(grey_video(1, 16, 16), dot)


@PROPERTY
@given(frames=st.integers(1, 4), height=st.integers(1, 24), width=st.integers(1, 24),
       mask_height=st.integers(1, 24), mask_width=st.integers(1, 24), one_frame=st.booleans(),
       unbatched=st.booleans())
def test_match_output_always_has_the_video_shape(frames, height, width, mask_height, mask_width, one_frame,
                                                  unbatched):
    mask = torch.ones(1 if one_frame else frames, mask_height, mask_width)
    matched = match(grey_video(frames, height, width), mask[0] if unbatched else mask)
    assert matched.shape == (frames, height, width)
