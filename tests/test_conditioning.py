"""Product cut-out and aligned paste."""

import numpy as np
import pytest

from pvtt_train.conditioning import aligned_paste, mask_box, product_box


def photo(h=16, w=16, box=(5, 6, 9, 11), backdrop=0.95, noise=0.0, seed=0):
    """A product photo: a 2-colour striped product at box (x0, y0, x1, y1) on a plain backdrop."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), backdrop, np.float32) + rng.uniform(-noise, noise, (h, w, 3)).astype(np.float32)
    x0, y0, x1, y1 = box
    prod = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    prod[:] = (0.8, 0.1, 0.2)
    prod[::2] = (0.1, 0.3, 0.9)
    img[y0:y1, x0:x1] = prod
    return img


def moving_mask(frames=5, h=16, w=16, size=(4, 5), step=2):
    """A size=(bw, bh) rectangle moving right by ``step`` px a frame; returns mask and boxes."""
    mask = np.zeros((frames, h, w), np.float32)
    boxes = []
    bw, bh = size
    for f in range(frames):
        x0, y0 = 1 + step * f, 3
        mask[f, y0:y0 + bh, x0:x0 + bw] = 1
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    return mask, boxes


def test_product_box_on_plain_backdrop():
    assert product_box(photo(box=(5, 6, 9, 11))) == (5, 6, 9, 11)


def test_product_box_ignores_backdrop_noise_below_tolerance():
    assert product_box(photo(box=(2, 3, 12, 7), noise=0.03)) == (2, 3, 12, 7)


def test_product_box_of_a_plain_photo_is_the_whole_photo():
    assert product_box(np.full((10, 12, 3), 0.5, np.float32)) == (0, 0, 12, 10)


def test_product_box_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        product_box(np.zeros((16, 16), np.float32))


def test_mask_box():
    m = np.zeros((8, 8), np.float32)
    assert mask_box(m) is None
    m[2:5, 3:7] = 1
    assert mask_box(m) == (3, 2, 7, 5)


def test_aligned_paste_is_zero_outside_mask_and_nonzero_inside():
    mask, _ = moving_mask()
    paste = aligned_paste(photo(), mask)
    assert paste.shape == (5, 16, 16, 3) and paste.dtype == np.float32
    outside = mask < 0.5
    assert np.count_nonzero(paste[outside]) == 0
    assert (paste[~outside].max(axis=-1) > 0.5).all()  # the product's colours, no backdrop


def test_aligned_paste_follows_a_moving_mask():
    ref = photo(box=(5, 6, 9, 11))  # 4 wide, 5 high: same size as the mask box, so the copy is exact
    crop = ref[6:11, 5:9]
    mask, boxes = moving_mask(size=(4, 5), step=2)
    paste = aligned_paste(ref, mask)
    for f, (x0, y0, x1, y1) in enumerate(boxes):
        np.testing.assert_array_equal(paste[f, y0:y1, x0:x1], crop)
        assert mask_box(paste[f].max(-1)) == (x0, y0, x1, y1)


def test_aligned_paste_resizes_into_the_box():
    ref = photo(box=(4, 4, 12, 12))  # 8x8 product
    mask = np.zeros((1, 16, 16), np.float32)
    mask[0, 2:6, 8:12] = 1  # 4x4 box
    paste = aligned_paste(ref, mask)
    crop = ref[4:12, 4:12]
    # Area-downsampled by 2: each 2x2 block of the product averages two stripe rows.
    expected = crop.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(paste[0, 2:6, 8:12], expected, atol=1e-6)


def test_empty_mask_frame_gives_zeros():
    mask, _ = moving_mask(frames=3)
    mask[1] = 0
    paste = aligned_paste(photo(), mask)
    assert np.count_nonzero(paste[1]) == 0
    assert np.count_nonzero(paste[0]) > 0 and np.count_nonzero(paste[2]) > 0


def test_aligned_paste_rejects_wrong_mask_rank():
    with pytest.raises(ValueError, match=r"\[F, H, W\]"):
        aligned_paste(photo(), np.zeros((16, 16), np.float32))
