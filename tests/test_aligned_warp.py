"""aligned_warp on hand-made cases with known answers: rotation, scale, and a matte without fringes."""

import math

import cv2
import numpy as np
import pytest

from pvtt_train.aligned_warp import (
    aligned_warp,
    mask_hole_fraction,
    nearest_turn,
    product_matte,
    shape_moments,
)
from pvtt_train.conditioning import aligned_paste

RED, WHITE = np.array([0.9, 0.1, 0.1], np.float32), np.array([1.0, 1.0, 1.0], np.float32)
BLUE = np.array([0.1, 0.1, 0.9], np.float32)


def rectangle_photo(size=96, half=(30, 12), ss=8):
    """A red upright rectangle on a white backdrop, anti-aliased (so its rim is pink)."""
    big = np.zeros((size * ss, size * ss), np.float32)
    c = size * ss // 2
    hx, hy = round(half[0] * ss), round(half[1] * ss)
    big[c - hy:c + hy, c - hx:c + hx] = 1
    cover = big.reshape(size, ss, size, ss).mean(axis=(1, 3))
    return cover[..., None] * RED + (1 - cover[..., None]) * WHITE


def rotated_rectangle_mask(size, centre, half, degrees):
    box = cv2.boxPoints(((centre[0], centre[1]), (2 * half[0], 2 * half[1]), degrees))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(box * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(np.float32)


@pytest.mark.parametrize("degrees", [0.0, 20.0, -35.0, 60.0])
def test_a_rotated_rectangle_mask_gives_that_rotation(degrees):
    mask = rotated_rectangle_mask(64, (32, 32), (20, 8), degrees)[None]
    out = aligned_warp(rectangle_photo(), mask)[0]
    red = (out[..., 1] < 0.5) & (mask[0] > 0)
    _, _, angle, aniso = shape_moments(red.astype(np.float64))
    assert aniso > 0.5
    assert abs(math.degrees(math.remainder(angle - math.radians(degrees), math.pi))) < 2.0
    assert red.sum() > 0.97 * mask.sum()  # the product fills the mask


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.5])
def test_a_scaled_mask_gives_that_scale(scale):
    photo = rectangle_photo()
    photo[40:56, 36:60] = BLUE  # a 16 x 24 label inside the red product
    alpha, _ = product_matte(photo)
    size = round(96 * scale)
    mask = (cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32)[None]
    out = aligned_warp(photo, mask)[0]
    blue = (out[..., 2] > 0.5).sum()
    assert blue == pytest.approx(16 * 24 * scale ** 2, rel=0.15)


def test_no_backdrop_colour_in_the_edge_pixels():
    photo = rectangle_photo(half=(29.5, 29.5))  # edges mid-pixel: a one-pixel pink rim
    mask = rotated_rectangle_mask(96, (48, 48), (29.5, 29.5), 0.0)[None]  # the photo's own size: its rim stays pink
    rim = mask[0] - cv2.erode(mask[0], np.ones((3, 3), np.uint8))
    warped = aligned_warp(photo, mask)[0][rim > 0]
    assert np.abs(warped - RED).max() < 0.02  # every rim pixel is the product's red, not pink
    pasted = aligned_paste(photo, mask)[0][rim > 0]
    assert np.abs(pasted - RED).max() > 0.1  # the hard 0/1 matte of the paste keeps a pink rim


def test_matte_is_soft_at_the_rim_and_exact_inside_and_out():
    photo = rectangle_photo(half=(30, 12), ss=8)
    alpha, colour = product_matte(photo)
    cover = photo[..., 1] * -1 / 0.9 + 1 / 0.9  # the true coverage: green goes 1 -> 0.1 from backdrop to red
    assert np.abs(alpha - cover).max() < 0.02
    assert np.abs(colour[alpha > 0.01] - RED).max() < 0.02


def test_continuity_picks_the_turn_nearest_the_previous_frame():
    assert nearest_turn(math.radians(170), 0.0) == pytest.approx(math.radians(-10))
    assert nearest_turn(math.radians(-80), math.radians(85)) == pytest.approx(math.radians(100))


def test_a_mask_turning_past_90_degrees_is_followed_without_a_flip():
    mask = np.stack([rotated_rectangle_mask(64, (32, 32), (20, 8), d) for d in (70, 85, 100, 115)])
    out = aligned_warp(rectangle_photo(), mask)
    for f, degrees in enumerate((70, 85, 100, 115)):
        red = (out[f][..., 1] < 0.5) & (mask[f] > 0)
        assert red.sum() > 0.97 * mask[f].sum(), degrees


def test_zero_outside_the_mask_and_empty_frames_stay_empty():
    mask = np.zeros((2, 32, 32), np.float32)
    mask[1, 8:20, 10:26] = 1
    out = aligned_warp(rectangle_photo(), mask)
    assert out.shape == (2, 32, 32, 3)
    assert (out[0] == 0).all() and (out[1][mask[1] == 0] == 0).all()
    assert out.min() >= 0 and out.max() <= 1


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="mask must be"):
        aligned_warp(rectangle_photo(), np.ones((32, 32)))
    with pytest.raises(ValueError, match="reference must be"):
        aligned_warp(np.ones((32, 32)), np.ones((1, 32, 32)))


def mug_silhouette(size: int, scale: float = 1.0) -> np.ndarray:
    """A mug: a body and a ring handle whose hole shows what is behind it ([size, size] in {0, 1})."""
    shape = np.zeros((size, size), np.uint8)
    c, k = size // 2, scale
    cv2.circle(shape, (round(c + 10 * k), c), round(18 * k), 1, -1)
    cv2.circle(shape, (round(c + 12 * k), c), round(10 * k), 0, -1)  # the handle's hole
    cv2.rectangle(shape, (round(c - 30 * k), round(c - 24 * k)), (round(c + 10 * k), round(c + 24 * k)), 1, -1)
    return shape.astype(np.float32)


def test_mask_hole_fraction_measures_the_holes_a_mask_encloses():
    mug = mug_silhouette(96)
    hole = 96 * 96 - int(mug.sum()) - int(cv2.floodFill(mug.astype(np.uint8).copy(), None, (0, 0), 1)[0])
    assert mask_hole_fraction(mug[None].repeat(3, 0)) == pytest.approx(hole / (hole + mug.sum()), rel=1e-6)
    assert hole > 0.03 * mug.sum()
    assert mask_hole_fraction(rotated_rectangle_mask(64, (32, 32), (20, 8), 30.0)[None]) == 0.0


def test_a_product_with_a_hole_is_warped_onto_a_mask_with_that_hole():
    """A mug photographed on white: with the handle's hole filled, the product's area and centroid are the
    filled shape's, so it lands too small and off centre and paints backdrop white into the mask."""
    photo = mug_silhouette(96)[..., None] * RED + (1 - mug_silhouette(96)[..., None]) * WHITE
    mask = mug_silhouette(64, scale=64 / 96)[None]
    out = aligned_warp(photo, mask)[0]
    inside = mask[0] > 0
    assert np.abs(out[inside] - RED).max(axis=1).mean() < 0.02  # red everywhere in the mask, no white disc
    filled, _ = product_matte(photo)  # what the photo alone gives: the hole is product
    holed, _ = product_matte(photo, mask_hole_fraction(mask))
    assert filled.sum() > holed.sum() + 0.9 * (filled.sum() - mug_silhouette(96).sum())


def test_white_print_on_a_product_without_holes_stays_product():
    photo = rectangle_photo()
    photo[44:52, 40:56] = WHITE  # a white label enclosed by the red product
    mask = rotated_rectangle_mask(64, (32, 32), (20, 8), 0.0)[None]
    alpha, _ = product_matte(photo, mask_hole_fraction(mask))
    assert (alpha[44:52, 40:56] == 1).all()
    out = aligned_warp(photo, mask)[0]
    assert (out[mask[0] > 0].min(axis=1) > 0.05).mean() > 0.1  # the label is pasted, white, inside the mask
