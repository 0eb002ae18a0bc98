"""Product matte and aligned paste (the conditioning that places the product photo on the mask)."""

import numpy as np
import pytest

from pvtt_train.conditioning import aligned_paste, product_alpha

RED, BLUE = np.array([0.8, 0.1, 0.2], np.float32), np.array([0.1, 0.3, 0.9], np.float32)


def photo(h=16, w=16, box=(5, 6, 9, 11), backdrop=0.95, noise=0.0, seed=0):
    """A product photo: a red/blue striped product at box (x0, y0, x1, y1) on a plain backdrop."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), backdrop, np.float32) + rng.uniform(-noise, noise, (h, w, 3)).astype(np.float32)
    x0, y0, x1, y1 = box
    prod = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    prod[:] = RED
    prod[::2] = BLUE
    img[y0:y1, x0:x1] = prod
    return img


def moving_mask(frames=5, h=16, w=16, size=(4, 5), step=2):
    """A size=(bw, bh) rectangle moving right by ``step`` px a frame."""
    mask = np.zeros((frames, h, w), np.float32)
    bw, bh = size
    for f in range(frames):
        mask[f, 3:3 + bh, 1 + step * f:1 + step * f + bw] = 1
    return mask


def test_product_alpha_is_the_product_on_a_plain_backdrop():
    alpha = product_alpha(photo(box=(5, 6, 9, 11)))
    expected = np.zeros((16, 16), np.float32)
    expected[6:11, 5:9] = 1
    np.testing.assert_array_equal(alpha, expected)


def test_product_alpha_ignores_backdrop_noise_below_tolerance():
    alpha = product_alpha(photo(box=(2, 3, 12, 7), noise=0.03))
    assert alpha.sum() == 10 * 4


def test_product_alpha_of_a_plain_photo_is_the_whole_photo():
    assert product_alpha(np.full((10, 12, 3), 0.5, np.float32)).min() == 1


def test_product_alpha_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        product_alpha(np.zeros((16, 16), np.float32))


def test_paste_is_zero_outside_the_mask_and_filled_inside():
    mask = moving_mask()
    paste = aligned_paste(photo(), mask)
    assert paste.shape == (5, 16, 16, 3) and paste.dtype == np.float32
    assert np.count_nonzero(paste[mask < 0.5]) == 0
    assert (paste[mask > 0.5].max(axis=-1) > 0.25).all()


def test_paste_moves_with_the_mask():
    mask = moving_mask(step=2)
    paste = aligned_paste(photo(), mask)
    for f in range(1, 5):
        np.testing.assert_allclose(paste[f][:, 2 * f:], paste[0][:, : 16 - 2 * f], atol=1e-6)


def test_paste_has_no_backdrop_colour_on_its_rim():
    """Premultiplied warping: every pasted pixel mixes only the product's own two colours."""
    ref = photo(box=(4, 4, 12, 12))
    mask = np.zeros((1, 16, 16), np.float32)
    mask[0, 5:10, 6:11] = 1  # a 5x5 box: the 8x8 product is scaled by 5/8, off the pixel grid
    px = aligned_paste(ref, mask)[0][mask[0] > 0.5]
    d = BLUE - RED
    t = np.clip(((px - RED) @ d) / (d @ d), 0, 1)
    dist = np.linalg.norm(px - (RED + t[:, None] * d), axis=1)
    assert dist.max() < 1e-4


def test_paste_scales_the_product_to_the_mask_area():
    ref = photo(box=(4, 4, 12, 12))  # 8x8 product, half red rows, half blue
    mask = np.zeros((1, 16, 16), np.float32)
    mask[0, 2:6, 8:12] = 1  # 4x4: scale 0.5
    inside = aligned_paste(ref, mask)[0, 2:6, 8:12]
    np.testing.assert_allclose(inside.mean(axis=(0, 1)), (RED + BLUE) / 2, atol=0.02)


def test_empty_mask_frame_gives_zeros():
    mask = moving_mask(frames=3)
    mask[1] = 0
    paste = aligned_paste(photo(), mask)
    assert np.count_nonzero(paste[1]) == 0
    assert np.count_nonzero(paste[0]) > 0 and np.count_nonzero(paste[2]) > 0


def test_paste_rejects_wrong_mask_rank():
    with pytest.raises(ValueError, match=r"\[F, H, W\]"):
        aligned_paste(photo(), np.zeros((16, 16), np.float32))
