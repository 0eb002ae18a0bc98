"""The product photo warped onto each frame's mask by a similarity transform, with a fringe-free matte.

``conditioning.aligned_paste`` places the photo by the mask's centroid and area only, so a rotated
product is pasted upright, and its hard 0/1 matte keeps the backdrop-tinted rim of the photo's
anti-aliased edge. ``aligned_warp`` is a drop-in alternative with the same signature:

- **Matte.** The backdrop colour is the median of the photo's border. Pixels far from it are the
  product's core; each edge pixel's true colour is taken from the core pixels near it, and its
  alpha is how far it lies from the backdrop towards that colour (``I = a F + (1 - a) B`` solved
  for ``a``). The edge is drawn with the core's colour, so no backdrop colour reaches the mask.
- **Holes.** A backdrop-coloured region the product encloses is either the backdrop seen through a
  hole (a mug's handle) or a white print on the product; the photo alone cannot tell. The mask can:
  when the template's mask has holes too (``mask_hole_fraction``), the photo's large enclosed
  backdrop regions are holes, so the product's area, centroid and moments match the mask's. Filled,
  a mug was pasted too small, off centre and with a white disc in its handle.
- **Pose.** Per frame, the mask's moments give the similarity transform: the centroid the
  translation, the area the scale, the second moments the orientation relative to the photo's own.
  Second moments fix an axis only up to 180 degrees, so the turn nearest the previous frame's is
  taken (the first frame: nearest upright, as products are photographed). A shape whose second
  moments are isotropic (a circle, a square) has no axis; it keeps the previous frame's turn.
- **Resampling.** The premultiplied photo is shrunk with an area filter to about the target size,
  then warped (OpenCV, bicubic), so a large photo is not aliased; mask pixels it does not reach get the
  product's nearby colour. Bicubic rather than bilinear: on the held-out clips the warp keeps 0.86 of
  the truth's fine detail instead of 0.69 (label text, photo texture), at +0.3 dB.

Arrays are numpy float in [0, 1]: the photo [H, W, 3], masks [F, H, W], the result [F, H, W, 3],
zero outside the mask (as ``aligned_paste``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Colour distance (max over channels) up to which a photo pixel may be backdrop, and the width of the
#: alpha ramp used where the product's colour is too close to the backdrop's to solve for alpha.
BACKDROP_DISTANCE, CORE_DISTANCE = 0.04, 0.15
#: Anisotropy (0 = isotropic, 1 = a line) below which second moments give no reliable orientation.
MIN_ANISOTROPY = 0.08
#: Output supersampling of the warp (then box-filtered down), as in ``aligned_paste``, and the largest
#: supersampled side: a 1080p frame is warped at 1x (its source is area-shrunk first, so nothing aliases)
#: rather than at 4x, which would hold half a gigabyte per frame.
SUPERSAMPLE, MAX_SUPERSAMPLED_SIDE = 4, 1024
#: Share of a mask's filled silhouette that must be holes before the photo's enclosed backdrop regions are
#: taken for holes, and the share of the holes' expected area a region needs to count as one (smaller
#: backdrop-coloured specks, e.g. white lettering, stay product).
MIN_HOLE_FRACTION, MIN_HOLE_SHARE = 0.01, 0.25
#: Frames of a clip whose mask holes are measured (evenly spaced): holes do not come and go.
HOLE_SAMPLE_FRAMES = 9


def backdrop_colour(photo: np.ndarray) -> np.ndarray:
    """Median colour of the photo's one-pixel border: the plain backdrop products are shot on."""
    border = np.concatenate([photo[0], photo[-1], photo[:, 0], photo[:, -1]])
    return np.median(border, axis=0).astype(np.float32)


def _spread(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: weighted values averaged over a Gaussian neighbourhood (NaN-free)."""
    num = cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)[..., None]
    return num / np.maximum(den, 1e-6), den[..., 0]


def _enclosed(outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Components (4-connected) of the boolean ``outside`` [H, W]: their labels, and which labels touch the border."""
    _, labels = cv2.connectedComponents(outside.astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return labels, border[border > 0]


def mask_hole_fraction(mask: np.ndarray) -> float:
    """Median over frames of the share of the mask's filled silhouette that is holes (background it encloses)."""
    frames = [m for m in mask[np.unique(np.linspace(0, len(mask) - 1, HOLE_SAMPLE_FRAMES).round().astype(int))] > 0.5
              if m.any()]
    fractions = []
    for m in frames:
        labels, border = _enclosed(~m)
        holes = int(((labels > 0) & ~np.isin(labels, border)).sum())
        fractions.append(holes / (holes + int(m.sum())))
    return float(np.median(fractions)) if fractions else 0.0


def product_matte(photo: np.ndarray, hole_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Soft alpha [H, W] and decontaminated colour [H, W, 3] of the product in a backdrop photo.

    The backdrop is what is close to its colour and connected to the border, so a product colour
    near the backdrop's inside the silhouette still counts as product, unless the mask says the
    product has holes (``hole_fraction``, from ``mask_hole_fraction``): then enclosed backdrop regions
    of at least ``MIN_HOLE_SHARE`` of the holes' expected area are holes. The silhouette's interior is
    opaque with the photo's own colours; its one-pixel rim gets alpha and colour from the interior.
    """
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"reference must be [H, W, 3], got shape {tuple(photo.shape)}")
    photo = photo.astype(np.float32)
    backdrop = backdrop_colour(photo)
    distance = np.abs(photo - backdrop).max(axis=2)
    low = (distance <= BACKDROP_DISTANCE).astype(np.uint8)
    labels, edge_labels = _enclosed(low > 0)
    silhouette = ~np.isin(labels, edge_labels)
    if silhouette.all() or not silhouette.any():  # no product stands out from a backdrop: use the whole photo
        return np.ones(photo.shape[:2], np.float32), photo
    if hole_fraction >= MIN_HOLE_FRACTION:
        areas = np.bincount(labels.ravel())
        enclosed = np.setdiff1d(np.nonzero(areas)[0], np.concatenate([[0], edge_labels]))
        holes = enclosed[areas[enclosed] >= MIN_HOLE_SHARE * hole_fraction * silhouette.sum()]
        silhouette &= ~np.isin(labels, holes)
    core = cv2.erode(silhouette.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    core = core if core.any() else silhouette
    near, support = _spread(photo, core.astype(np.float32), sigma=2.0)
    near = np.where(support[..., None] > 1e-3, near, photo[core].mean(axis=0))
    # Solve photo = a * near + (1 - a) * backdrop for a, per pixel, by projection onto near - backdrop.
    direction = near - backdrop
    reach = (direction * direction).sum(axis=2)
    alpha = ((photo - backdrop) * direction).sum(axis=2) / np.maximum(reach, 1e-6)
    ramp = (distance - BACKDROP_DISTANCE) / (CORE_DISTANCE - BACKDROP_DISTANCE)
    alpha = np.where(reach > CORE_DISTANCE ** 2, alpha, ramp)  # colour too close to the backdrop: distance ramp
    alpha = np.clip(np.where(core, 1.0, np.where(silhouette, alpha, 0.0)), 0, 1)
    colour = np.where(core[..., None], photo, near)
    return alpha.astype(np.float32), np.clip(colour, 0, 1).astype(np.float32)


def shape_moments(weight: np.ndarray) -> tuple[float, np.ndarray, float, float]:
    """Area, centroid (x, y) in pixel-index coordinates, orientation (radians) and anisotropy of a [H, W] weight."""
    area = float(weight.sum())
    ys, xs = np.indices(weight.shape, dtype=np.float64)
    cx, cy = (weight * xs).sum() / area, (weight * ys).sum() / area
    mu20 = (weight * (xs - cx) ** 2).sum() / area
    mu02 = (weight * (ys - cy) ** 2).sum() / area
    mu11 = (weight * (xs - cx) * (ys - cy)).sum() / area
    angle = 0.5 * math.atan2(2 * mu11, mu20 - mu02)
    anisotropy = math.hypot(mu20 - mu02, 2 * mu11) / max(mu20 + mu02, 1e-12)
    return area, np.array([cx, cy]), angle, anisotropy


def nearest_turn(turn: float, previous: float) -> float:
    """``turn`` or ``turn + pi`` (second moments cannot tell them apart), whichever is nearer ``previous``."""
    return previous + math.remainder(turn - previous, math.pi)


def similarity(scale: float, turn: float, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2x3 matrix mapping ``source`` to ``target`` (x, y), scaling by ``scale`` and turning by ``turn``."""
    c, s = scale * math.cos(turn), scale * math.sin(turn)
    linear = np.array([[c, -s], [s, c]])
    return np.concatenate([linear, (target - linear @ source)[:, None]], axis=1)


def _warp_supersampled(premultiplied: np.ndarray, warp: np.ndarray, height: int, width: int) -> np.ndarray:
    """``premultiplied`` [h, w, 4] through the 2x3 ``warp`` into [height, width, 4], anti-aliased.

    The warp runs at up to SUPERSAMPLE times the output size (at most MAX_SUPERSAMPLED_SIDE pixels a side,
    at least 1x) and is box-filtered down (as ``aligned_paste``); a photo more than that many times larger
    than its place is first shrunk with an area filter, so no photo pixel is skipped.
    """
    ss = max(1, min(SUPERSAMPLE, MAX_SUPERSAMPLED_SIDE // max(height, width)))
    scale = math.hypot(*warp[:, 0])
    source = premultiplied
    if scale * ss < 1:
        h, w = premultiplied.shape[:2]
        size = (max(1, round(w * scale * ss)), max(1, round(h * scale * ss)))
        source = cv2.resize(premultiplied, size, interpolation=cv2.INTER_AREA)
        # Source pixel index i of the shrunk photo sits at (i + 0.5) / factor - 0.5 in the original.
        factor = np.array([size[0] / w, size[1] / h])
        unshrink = np.array([[1 / factor[0], 0, 0.5 / factor[0] - 0.5], [0, 1 / factor[1], 0.5 / factor[1] - 0.5]])
        warp = warp[:, :2] @ unshrink + np.concatenate([np.zeros((2, 2)), warp[:, 2:]], axis=1)
    # Output pixel j of the supersampled grid sits at (j + 0.5) / ss - 0.5 in output index coordinates.
    upsample = np.array([[ss, 0, 0.5 * ss - 0.5], [0, ss, 0.5 * ss - 0.5]])
    big_warp = upsample[:, :2] @ warp + np.concatenate([np.zeros((2, 2)), upsample[:, 2:]], axis=1)
    big = cv2.warpAffine(source, big_warp.astype(np.float32), (width * ss, height * ss), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_CONSTANT)
    return big.reshape(height, ss, width, ss, 4).mean(axis=(1, 3))


def aligned_warp(reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The product matted from ``reference`` and warped onto each frame's mask; zero outside the mask."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be [F, H, W], got shape {tuple(mask.shape)}")
    alpha, colour = product_matte(reference, mask_hole_fraction(mask))
    photo_area, photo_centre, photo_angle, photo_aniso = shape_moments(alpha)
    premultiplied = np.concatenate([colour * alpha[..., None], alpha[..., None]], axis=2)
    mean_colour = premultiplied[..., :3].sum((0, 1)) / photo_area
    frames, height, width = mask.shape
    out = np.zeros((frames, height, width, 3), np.float32)
    turn = 0.0
    for f in range(frames):
        inside = (mask[f] > 0.5).astype(np.float64)
        if not inside.any():
            continue
        area, centre, angle, aniso = shape_moments(inside)
        if aniso >= MIN_ANISOTROPY and photo_aniso >= MIN_ANISOTROPY:
            turn = nearest_turn(angle - photo_angle, turn)
        scale = math.sqrt(area / photo_area)
        moved = _warp_supersampled(premultiplied, similarity(scale, turn, photo_centre, centre), height, width)
        moved[..., 3] = np.clip(moved[..., 3], 0, 1)  # bicubic overshoots the matte's edge slightly
        cover = moved[..., 3]
        fill, support = _spread(moved[..., :3] / np.maximum(cover[..., None], 1e-6), (cover > 0.5).astype(np.float32),
                                sigma=max(2.0, 0.25 * math.sqrt(area)))
        fill = np.where(support[..., None] > 1e-4, fill, mean_colour)
        out[f] = (moved[..., :3] + (1 - cover[..., None]) * fill) * inside[..., None]
    return np.clip(out, 0, 1)
