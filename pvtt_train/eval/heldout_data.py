"""A second, independent clip generator for held-out evaluation: nothing in training ever sees it.

The training generator (``data/synthetic.py``) draws flat two-colour patterns on five simple shapes
over a gradient, with small rotations. This one is built to look like what a designer brings:

- product silhouettes with thin parts: bottles (neck and cap), boxes with lids and knobs, cans,
  squeeze tubes, mugs with a ring handle, irregular polygons;
- photo textures on the product (scikit-image's bundled sample photos, which ship inside the
  wheel: nothing is downloaded) and a printed text label (OpenCV ``putText``);
- strong in-plane rotation (up to ±90° over a clip), scale changes and a pan across the frame;
- a blurred photo background (other sample photos) under a static camera, with a drifting light
  field (global gain and a fixed directional gradient) that lights the product too.

Each clip is a template video (old product A), A's per-frame mask, a catalogue photo of the new
product B (upright on a plain light backdrop, unlit) and the ground truth: B in A's place, with
A's motion, the same light and background. A and B share the silhouette (the task replaces a
product of the same form), so the mask is exact for both. Everything is deterministic for a seed.

Arrays are float32 in [0, 1]: clips [F, H, W, 3], masks [F, H, W], the product photo [H, W, 3].
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

SHAPES = ("bottle", "box_with_lid", "can", "tube", "mug", "polygon")
#: Sample photos for product textures and for backgrounds: disjoint, so a product never sits on its own photo.
TEXTURE_PHOTOS = ("astronaut", "chelsea", "rocket", "colorwheel", "immunohistochemistry", "hubble_deep_field",
                  "camera", "coins")
BACKGROUND_PHOTOS = ("coffee", "stereo_motorcycle", "retina", "brick", "grass", "gravel", "moon")
SYLLABLES = ("ka", "lo", "ve", "ri", "sun", "mo", "tra", "zen", "pi", "xo", "na", "bel", "qu", "dor", "fi")
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)
#: The unit square of product coordinates fills this fraction of the sprite's side.
SPRITE_FILL = 0.95


@dataclass(frozen=True)
class HeldoutConfig:
    """Size and motion ranges of the held-out clips (sizes as fractions of the frame's shorter side)."""

    frames: int = 33
    height: int = 256
    width: int = 256
    supersample: int = 2
    product_size: tuple[float, float] = (0.3, 0.42)  # the product's height at its smaller scale
    max_scale_ratio: float = 1.4  # larger / smaller scale over the clip
    max_rotation_deg: float = 90.0  # total in-plane rotation over the clip
    light_gain: tuple[float, float] = (0.75, 1.2)
    light_slope: float = 0.25  # strength of the fixed directional light gradient across the frame
    background_blur: tuple[float, float] = (0.0, 2.5)  # Gaussian sigma at 256 px, scaled with the frame

    def __post_init__(self):
        if self.frames < 2 or min(self.height, self.width) < 32:
            raise ValueError(f"held-out clips need at least 2 frames and 32x32 pixels, got "
                             f"{self.frames}x{self.height}x{self.width}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        lo, hi = self.product_size
        if not 0 < lo <= hi or hi * self.max_scale_ratio > 0.7:
            raise ValueError(f"product_size {self.product_size} x max_scale_ratio {self.max_scale_ratio} must stay "
                             f"within 0.7 of the frame, so the product fits while it rotates")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeldoutClip:
    template: np.ndarray  # [F, H, W, 3], old product A
    mask: np.ndarray  # [F, H, W] in {0, 1}, where A is
    product: np.ndarray  # [H, W, 3], catalogue photo of B
    truth: np.ndarray  # [F, H, W, 3], B in A's place
    seed: int
    shape: str
    rotation_deg: float  # total rotation over the clip
    scale_ratio: float  # end scale / start scale


@functools.cache
def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled sample photos as float32 RGB [H, W, 3] (grey ones repeated)."""
    from ..training_extra import require

    require("the held-out evaluation's product photos", "skimage")
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs: the left view
        image = image[0]
    image = np.asarray(image, np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    image.setflags(write=False)
    return image


def _crop(rng: np.random.Generator, photo: np.ndarray, out_h: int, out_w: int, min_frac: float) -> np.ndarray:
    """A random crop of ``photo`` with the output's aspect, at least ``min_frac`` of its side, resized."""
    ph, pw = photo.shape[:2]
    aspect = out_w / out_h
    side = rng.uniform(min_frac, 1.0)
    ch = int(min(ph, pw / aspect) * side)
    cw = max(1, int(ch * aspect))
    ch = max(1, ch)
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    return cv2.resize(np.ascontiguousarray(photo[y:y + ch, x:x + cw]), (out_w, out_h), interpolation=cv2.INTER_AREA)


def _tint(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    """Grey photos get a random colour; colour photos a mild random colour balance."""
    grey = np.allclose(photo[..., 0], photo[..., 1]) and np.allclose(photo[..., 1], photo[..., 2])
    colour = rng.uniform(0.3, 1.0, 3) if grey else rng.uniform(0.8, 1.1, 3)
    return np.clip(photo * colour.astype(np.float32), 0, 1)


# --- silhouettes: lists of (polygon in product units, fill value), drawn in order ------------------------------

def _rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _ellipse(cx, cy, rx, ry, n=72):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _silhouette(shape: str, rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, float]], tuple[float, float]]:
    """The shape's parts in product units (x right, y down, the product spans y in [-1, 1]) and the
    label band (y0, y1) on its body."""
    if shape == "bottle":
        w, n = rng.uniform(0.32, 0.48), rng.uniform(0.09, 0.15)
        body = [[-w, 1], [-w, -0.25], [-n, -0.55], [-n, -0.82], [n, -0.82], [n, -0.55], [w, -0.25], [w, 1]]
        return [(np.array(body, np.float64), 1), (_rect(-n * 1.35, -1, n * 1.35, -0.8), 1)], (0.0, 0.65)
    if shape == "box_with_lid":
        w = rng.uniform(0.55, 0.9)
        return [(_rect(-w, -0.6, w, 1), 1), (_rect(-w - 0.06, -0.84, w + 0.06, -0.58), 1),
                (_rect(-0.12, -1, 0.12, -0.82), 1)], (-0.2, 0.55)
    if shape == "can":
        w = rng.uniform(0.42, 0.62)
        return [(_rect(-w, -0.86, w, 0.86), 1), (_ellipse(0, -0.86, w, 0.13), 1), (_ellipse(0, 0.86, w, 0.13), 1),
                (_rect(-0.06, -1, 0.16, -0.93), 1)], (-0.45, 0.4)
    if shape == "tube":
        w = rng.uniform(0.42, 0.6)
        body = [[-w, -0.9], [w, -0.9], [0.2, 0.74], [-0.2, 0.74]]
        return [(np.array(body, np.float64), 1), (_rect(-w - 0.04, -1, w + 0.04, -0.88), 1),
                (_rect(-0.24, 0.72, 0.24, 1), 1)], (-0.7, -0.05)
    if shape == "mug":
        return [(_ellipse(0.42, 0.0, 0.42, 0.5), 1), (_ellipse(0.42, 0.0, 0.29, 0.37), 0),
                (_rect(-0.75, -0.8, 0.45, 0.8), 1), (_ellipse(-0.15, 0.8, 0.6, 0.12), 1)], (-0.45, 0.35)
    if shape == "polygon":
        k = int(rng.integers(7, 12))
        angles = (np.arange(k) + rng.uniform(-0.35, 0.35, k)) * 2 * math.pi / k  # spread: no sliver polygons
        radii = rng.uniform(0.55, 1.0, k)
        pts = np.stack([radii * np.sin(angles) * 0.85, -radii * np.cos(angles)], axis=1)
        return [(pts, 1)], (-0.2, 0.3)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _to_sprite(points: np.ndarray, side: int) -> np.ndarray:
    """Product units -> sprite pixel coordinates (pixel centres at integers), fixed point with 4 bits."""
    k = SPRITE_FILL * side / 2
    return np.round((points * k + (side - 1) / 2) * 16).astype(np.int32)


def _draw_alpha(parts, side: int) -> np.ndarray:
    alpha = np.zeros((side, side), np.float32)
    for poly, value in parts:
        cv2.fillPoly(alpha, [_to_sprite(poly, side)], float(value), lineType=cv2.LINE_AA, shift=4)
    return np.clip(alpha, 0, 1)


def _label_word(rng: np.random.Generator) -> str:
    return "".join(SYLLABLES[i] for i in rng.integers(len(SYLLABLES), size=int(rng.integers(2, 4)))).upper()


def print_text(image: np.ndarray, text: str, centre_y: int, width: int, height: int, font: int,
                colour: np.ndarray, thickness: int) -> None:
    """Print ``text`` centred on the sprite, scaled to fit ``width`` x ``height`` pixels, anti-aliased.

    ``cv2.putText`` draws only on 8-bit images, so it draws the glyphs' coverage, which blends the ink in."""
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = min(width / tw, height / th)
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = (round((image.shape[1] - tw) / 2), round(centre_y + th / 2))
    coverage = np.zeros(image.shape[:2], np.uint8)
    cv2.putText(coverage, text, origin, font, scale, 255, thickness, cv2.LINE_AA)
    k = (coverage.astype(np.float32) / 255)[..., None]
    image *= 1 - k
    image += k * colour


def _appearance(rng: np.random.Generator, parts, label_band: tuple[float, float], side: int,
                shaded: bool) -> np.ndarray:
    """The product's RGB sprite: a tinted photo texture, cylindrical shading and a printed label."""
    photo = _tint(rng, sample_photo(TEXTURE_PHOTOS[rng.integers(len(TEXTURE_PHOTOS))]))
    rgb = _crop(rng, photo, side, side, 0.35)
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    mix = rng.uniform(0.0, 0.45)
    rgb = (1 - mix) * rgb + mix * base
    xs = (np.arange(side) - (side - 1) / 2) / (SPRITE_FILL * side / 2)
    if shaded:  # a round body: darker towards its sides
        xmax = max(float(np.abs(p[:, 0]).max()) for p, v in parts if v)
        rgb = rgb * (0.7 + 0.3 * np.sqrt(np.clip(1 - (xs / xmax) ** 2, 0, 1)))[None, :, None].astype(np.float32)
    k = SPRITE_FILL * side / 2
    y0, y1 = (round(b * k + (side - 1) / 2) for b in label_band)
    label = rng.uniform(0.05, 0.85, 3).astype(np.float32)  # never the photo backdrop's near-white
    ink = np.where(label.mean() > 0.45, rng.uniform(0.0, 0.2, 3), rng.uniform(0.8, 1.0, 3)).astype(np.float32)
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    rgb[y0:y1] = label
    font = FONTS[rng.integers(len(FONTS))]
    thick = max(1, side // 90)
    line = (y1 - y0) / 3
    label_width = int(0.55 * side * min(1.0, _half_width_at(parts, (label_band[0] + label_band[1]) / 2)))
    print_text(rgb, _label_word(rng), int(y0 + 1.15 * line), label_width, int(line * 1.1), font, ink, thick)
    print_text(rgb, f"{rng.integers(1, 99) * 10} ml", int(y0 + 2.3 * line), int(label_width * 0.6),
                      int(line * 0.6), cv2.FONT_HERSHEY_SIMPLEX, ink, max(1, thick // 2))
    return np.clip(rgb, 0, 1)


def _half_width_at(parts, y: float) -> float:
    """Rough half-width of the filled parts at height ``y`` (product units), for fitting the label text."""
    widths = [np.abs(p[:, 0]).max() for p, v in parts if v and p[:, 1].min() <= y <= p[:, 1].max()]
    return float(max(widths)) if widths else 0.5


class HeldoutClipGenerator:
    """Seeded renderer: the same (config, seed) always gives the same clip, bit for bit."""

    def __init__(self, config: HeldoutConfig | None = None):
        self.config = config or HeldoutConfig()

    def clip(self, seed: int) -> HeldoutClip:
        c = self.config
        # Independent streams per aspect, so e.g. a longer clip keeps the same product, background and path.
        rng, look_rng, light_rng, photo_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
        short = min(c.height, c.width)
        size_small = rng.uniform(*c.product_size) * short
        ratio = rng.uniform(1.0, c.max_scale_ratio)
        sizes = (size_small, size_small * ratio) if rng.random() < 0.5 else (size_small * ratio, size_small)
        side = math.ceil(max(sizes) * c.supersample / SPRITE_FILL) + 4
        side += side % 2

        shape = SHAPES[rng.integers(len(SHAPES))]
        parts, band = _silhouette(shape, rng)
        alpha = _draw_alpha(parts, side)
        shaded = shape in ("bottle", "can", "tube", "mug")
        old_rgb = _appearance(look_rng, parts, band, side, shaded)
        new_rgb = _appearance(look_rng, parts, band, side, shaded)
        background = self._background(look_rng)
        light = self._light(light_rng)

        # Motion: a straight pan, rotation and scale, steady in time (so frame-to-frame change is even and
        # any jump at a model's window seam stands out); the product stays inside the frame.
        ys, xs = np.nonzero(alpha > 0)
        reach = float(np.sqrt(((xs - (side - 1) / 2) ** 2 + (ys - (side - 1) / 2) ** 2).max())) + 1
        margin = reach / side * max(sizes) / SPRITE_FILL + 2

        def point():
            return np.array([rng.uniform(margin, max(margin, c.width - margin)),
                             rng.uniform(margin, max(margin, c.height - margin))])

        p0, p1 = point(), point()
        rot0 = math.radians(rng.uniform(-15, 15))
        turn = math.radians(rng.uniform(-c.max_rotation_deg, c.max_rotation_deg))

        template = np.empty((c.frames, c.height, c.width, 3), np.float32)
        truth = np.empty_like(template)
        mask = np.empty((c.frames, c.height, c.width), np.float32)
        for f in range(c.frames):
            a = f / (c.frames - 1)
            centre = (1 - a) * p0 + a * p1
            size = sizes[0] * (sizes[1] / sizes[0]) ** a
            warp = self._warp(side, size, rot0 + a * turn, centre)
            cover = self._render(alpha, warp)
            old = self._render(old_rgb * alpha[..., None], warp)
            new = self._render(new_rgb * alpha[..., None], warp)
            keep = (1 - cover)[..., None] * background
            template[f] = np.clip((keep + old) * light[f], 0, 1)
            truth[f] = np.clip((keep + new) * light[f], 0, 1)
            mask[f] = (cover >= 0.5).astype(np.float32)

        product = self._catalogue_photo(photo_rng, alpha, new_rgb, side)
        return HeldoutClip(template=template, mask=mask, product=product, truth=truth, seed=seed, shape=shape,
                           rotation_deg=math.degrees(turn), scale_ratio=sizes[1] / sizes[0])

    def _warp(self, side: int, size: float, angle: float, centre: np.ndarray) -> np.ndarray:
        """Sprite pixels -> supersampled frame pixels: the product's height becomes ``size`` output pixels,
        rotated by ``angle`` about its centre placed at ``centre`` (continuous output coordinates)."""
        ss = self.config.supersample
        scale = ss * size / (SPRITE_FILL * side)
        cr, sr = math.cos(angle) * scale, math.sin(angle) * scale
        linear = np.array([[cr, -sr], [sr, cr]])
        offset = centre * ss - 0.5 - linear @ np.full(2, (side - 1) / 2)
        return np.concatenate([linear, offset[:, None]], axis=1).astype(np.float32)

    def _render(self, image: np.ndarray, warp: np.ndarray) -> np.ndarray:
        """Warp a premultiplied sprite (or its matte) into the supersampled frame and box-filter it down."""
        c, ss = self.config, self.config.supersample
        big = cv2.warpAffine(image, warp, (c.width * ss, c.height * ss), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if ss == 1:
            return big
        return big.reshape(c.height, ss, c.width, ss, *big.shape[2:]).mean(axis=(1, 3))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        photo = _tint(rng, sample_photo(BACKGROUND_PHOTOS[rng.integers(len(BACKGROUND_PHOTOS))]))
        image = _crop(rng, photo, c.height, c.width, 0.5)
        sigma = rng.uniform(*c.background_blur) * min(c.height, c.width) / 256
        return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0.3 else image

    def _light(self, rng: np.random.Generator) -> np.ndarray:
        """Per-frame light fields [F, H, W, 1]: a random-walk gain times a fixed directional gradient."""
        c = self.config
        gain = np.ones(c.frames)
        for f in range(1, c.frames):
            gain[f] = float(np.clip(gain[f - 1] + rng.normal(0, 0.02), *c.light_gain))
        phi = rng.uniform(0, 2 * math.pi)
        slope = rng.uniform(-c.light_slope, c.light_slope)
        yy, xx = np.mgrid[0:c.height, 0:c.width]
        d = (math.cos(phi) * (xx + 0.5 - c.width / 2) + math.sin(phi) * (yy + 0.5 - c.height / 2)) / max(c.height,
                                                                                                         c.width)
        field = (1 + slope * d).astype(np.float32)
        return (gain[:, None, None, None] * field[None, ..., None]).astype(np.float32)

    def _catalogue_photo(self, rng: np.random.Generator, alpha: np.ndarray, rgb: np.ndarray, side: int) -> np.ndarray:
        """The new product upright and centred on a plain light backdrop, 80 % of the frame's height, unlit."""
        c = self.config
        backdrop = np.full(3, rng.uniform(0.9, 1.0), np.float32)
        warp = self._warp(side, 0.8 * min(c.height, c.width), 0.0, np.array([c.width / 2, c.height / 2]))
        cover = self._render(alpha, warp)
        product = self._render(rgb * alpha[..., None], warp)
        return np.clip((1 - cover)[..., None] * backdrop + product, 0, 1).astype(np.float32)

    def batch(self, seeds) -> dict[str, np.ndarray]:
        """Stack clips: template/truth [B,F,H,W,3], mask [B,F,H,W], product [B,H,W,3]."""
        clips = [self.clip(int(s)) for s in seeds]
        return {key: np.stack([getattr(cl, key) for cl in clips]) for key in ("template", "mask", "product", "truth")}
