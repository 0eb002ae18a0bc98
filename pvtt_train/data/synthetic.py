"""Procedural product-template-transfer examples.

Every example is a *template clip* (a textured background with product A moving along a
pan / zoom / rotation / camera-shake trajectory), the per-frame *mask* of A, a *reference
image* of a different product B, and the *ground truth*: the same clip with B following A's
motion. Everything is rendered analytically with supersampling, so the generator is exact,
deterministic for a seed, and cheap enough to run inside the training loop (no dataset on disk).

Arrays are float32 in [0, 1]; clips are [F, H, W, 3], masks [F, H, W], the reference [H, W, 3].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .shapes import ASPECT_LIMITS, DEFAULT_ASPECT, SHAPES
from .warp_paste import LIT_PASTES, PASTES, supersampled_warp_paste

PATTERNS = ("stripes", "checker", "dots")
#: The grain's field covers product coordinates [-GRAIN_EXTENT, GRAIN_EXTENT] (a shape reaches 1, or 1.15 for a
#: diamond) in cells of GRAIN_CELL_UNITS: a product's half size is 2.5-4.1 output pixels, so a cell is about one
#: output pixel and the grain is the finest detail the clip can show.
GRAIN_EXTENT = 1.3
GRAIN_CELL_UNITS = 0.3


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and motion ranges of the generated clips (all lengths in pixels of the output)."""

    frames: int = 9
    height: int = 16
    width: int = 16
    supersample: int = 4
    product_size: tuple[float, float] = (5.0, 7.5)  # side of the product's bounding square
    max_zoom: float = 0.25  # relative size change over the clip
    max_rotation_deg: float = 12.0  # total in-plane rotation over the clip
    shake_px: float = 0.35  # std of the per-frame camera jitter
    light_gain: tuple[float, float] = (0.8, 1.2)  # per-frame global light, random walk inside
    #: Strength of a fixed directional light gradient across the frame (a light from one side): the light
    #: field is ``gain * (1 + slope * d)`` with ``d`` in [-0.5, 0.5] along a random direction and ``slope``
    #: drawn from [-light_slope, light_slope] per clip. One global gain per frame cannot express it, so a
    #: model given a paste lit by that gain must read the gradient off the background and shade the product.
    light_slope: float = 0.0
    #: Peak strength of a specular highlight on the new product: a white Gaussian spot at a random place on
    #: it, fixed in the product's own coordinates (so it moves and turns with it) and drawn per clip with a
    #: strength in [specular / 2, specular]. The product photo and its paste do not show it, so the
    #: conditioning does not fix it: a one-shot prediction can only spread it into a faint haze, a sampler
    #: must draw one sharp spot. 0 (default) draws none, and the clips stay bit for bit as before.
    specular: float = 0.0
    #: Share of clips whose scene has the specular light, shown on the template too. 0 (default) keeps the
    #: data above: every new product has a highlight and the template never shows one, so a model cannot
    #: tell a shiny scene from a matte one and draws a highlight everywhere, on a designer's matte product
    #: too. Above 0, that share of clips has a light that puts a highlight on the template's old product
    #: (which the model sees) and one of the same strength on the new product, at a place of its own that
    #: nothing shows; the other clips have none on either. The template then says whether to draw one and
    #: how bright; where it goes is still left to sampling.
    specular_scenes: float = 0.0
    #: Strength of a sheen on the new product: its colour is scaled by ``1 + a * d``, ``d`` in [-1, 1] along a
    #: random direction in the product's own coordinates (so the bright side moves and turns with it), ``a``
    #: drawn per clip from [sheen / 2, sheen]. Like the highlight, the photo and the paste do not show it, but it
    #: spans the whole product: a one-shot prediction averages the directions into no sheen at all, which
    #: the Fréchet distance punishes harder than a blurred spot (on the 64 gate clips a perfect regressor
    #: scores 2.240 against a perfect sampler's 0.693 at 0.8; 1.099 against 0.453 for the 0.6 highlight).
    #: 0 (default) draws none, and the clips stay bit for bit as before.
    sheen: float = 0.0
    #: Strength of a grain on the new product: its colour is scaled by ``1 + a * n``, ``n`` a random field of
    #: about one output pixel's scale fixed in the product's own coordinates (so it moves, turns and zooms with
    #: the product), ``a`` drawn per clip from [grain / 2, grain]. The photo and the paste do not show it. Unlike
    #: the highlight and the sheen, which are settled at high noise, fine texture is settled at low noise, the
    #: last steps a sampler takes: a one-shot prediction from a mid noise level returns the product smooth.
    #: 0 (default) draws none, and the clips stay bit for bit as before.
    grain: float = 0.0
    texture_std: float = 0.03
    #: The product silhouettes drawn (``SHAPES``). A circle, square or diamond has no orientation its mask
    #: can show, so the photo's pattern cannot be aligned to it; elongated shapes (``ellipse``, ``rounded``
    #: with an ``aspect`` well below 1) have one, as most real products (bottles, tubes, boxes) do.
    shapes: tuple[str, ...] = SHAPES
    aspect: tuple[float, float] = DEFAULT_ASPECT  # width / height of ellipses and rounded rectangles
    #: How the conditioning paste is made (``warp_paste.PASTES``): fitted at the working size by
    #: ``conditioning.aligned_paste`` (the first teachers), or warped at the supersampled size and shrunk,
    #: as the pipeline does for a designer's clip (``warp_paste``).
    paste: str = "aligned_paste"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Product:
    shape: str
    pattern: str
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    pattern_angle: float
    pattern_period: float  # in product units (the product spans [-1, 1])
    aspect: float  # ellipse / rounded-rectangle aspect (width / height)


@dataclass
class Example:
    template: np.ndarray  # [F, H, W, 3]
    mask: np.ndarray  # [F, H, W] in {0, 1}
    reference: np.ndarray  # [H, W, 3]
    target: np.ndarray  # [F, H, W, 3]
    seed: int
    paste: np.ndarray | None = None  # [F, H, W, 3] when the config asks for the supersampled warp paste


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, size=3)


def _random_product(rng: np.random.Generator, shape: str | None = None, shapes: tuple[str, ...] = SHAPES,
                    aspect: tuple[float, float] = DEFAULT_ASPECT) -> Product:
    shape = shape or shapes[rng.integers(len(shapes))]
    c1 = _random_color(rng)
    # Keep the two pattern colours apart so the pattern is visible at tiny sizes.
    c2 = _random_color(rng)
    while np.abs(c1 - c2).sum() < 0.6:
        c2 = _random_color(rng)
    return Product(
        shape=shape,
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        colors=(tuple(c1.tolist()), tuple(c2.tolist())),
        pattern_angle=float(rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4])),
        pattern_period=float(rng.choice([0.7, 1.0])),
        aspect=float(rng.uniform(*aspect)),
    )


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """Boolean coverage of a product shape in its own coordinates (u, v in [-1, 1])."""
    if shape == "square":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.15
    if shape == "rounded":
        au, av = np.abs(u) / aspect, np.abs(v)
        qu, qv = np.maximum(au - 0.6, 0), np.maximum(av - 0.6, 0)
        return (au <= 1) & (av <= 1) & (qu * qu + qv * qv <= 0.16)
    if shape == "ellipse":
        return (u / aspect) ** 2 + v * v <= 1
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _pattern_weight(product: Product, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """0/1 choice between the product's two colours."""
    ca, sa = math.cos(product.pattern_angle), math.sin(product.pattern_angle)
    a = (u * ca + v * sa) / product.pattern_period
    b = (-u * sa + v * ca) / product.pattern_period
    if product.pattern == "stripes":
        return (np.floor(a + 10.0) % 2).astype(np.float32)
    if product.pattern == "checker":
        return ((np.floor(a + 10.0) + np.floor(b + 10.0)) % 2).astype(np.float32)
    fa, fb = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
    return (fa * fa + fb * fb < 0.09).astype(np.float32)


def _render_product(product: Product, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB and coverage of a product sampled at product coordinates (u, v)."""
    cover = _shape_inside(product.shape, u, v, product.aspect).astype(np.float32)
    w = _pattern_weight(product, u, v)[..., None]
    rgb = (1 - w) * np.asarray(product.colors[0], np.float32) + w * np.asarray(product.colors[1], np.float32)
    return rgb, cover


def _box_downsample(x: np.ndarray, s: int) -> np.ndarray:
    """Average s x s blocks over the two axes after the leading one."""
    f, h, w = x.shape[:3]
    return x.reshape(f, h // s, s, w // s, s, *x.shape[3:]).mean(axis=(2, 4))


class SyntheticVideoGenerator:
    """Seeded renderer: the same (config, seed) always gives the same example, bit for bit."""

    def __init__(self, config: SyntheticConfig | None = None):
        self.config = config or SyntheticConfig()
        c = self.config
        if c.frames < 2 or c.height < 8 or c.width < 8:
            raise ValueError(f"clips need at least 2 frames and 8x8 pixels, got {c.frames}x{c.height}x{c.width}")
        if c.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {c.supersample}")
        lo, hi = c.product_size
        if not 0 < lo <= hi:
            raise ValueError(f"product_size must be (min, max) with 0 < min <= max, got {c.product_size}")
        # example() lets the product grow to 1.1 * max and keeps a 20 % margin: 2 * 0.6 * 1.1 * max must fit.
        if 1.32 * hi > min(c.height, c.width):
            raise ValueError(f"product_size max {hi} does not fit a {c.width}x{c.height} clip; use at most "
                             f"{min(c.height, c.width) / 1.32:.2f} or a larger clip")
        if not 0 <= c.max_zoom < 1:
            raise ValueError(f"max_zoom must be in [0, 1), got {c.max_zoom}")
        if not 0 < c.light_gain[0] <= c.light_gain[1]:
            raise ValueError(f"light_gain must be (min, max) with 0 < min <= max, got {c.light_gain}")
        if c.shake_px < 0 or c.texture_std < 0 or c.max_rotation_deg < 0:
            raise ValueError("shake_px, texture_std and max_rotation_deg must be >= 0")
        if c.paste not in PASTES:
            raise ValueError(f"paste must be one of {PASTES}, got {c.paste!r}")
        if not c.shapes or any(shape not in SHAPES for shape in c.shapes):
            raise ValueError(f"shapes must be a non-empty selection of {SHAPES}, got {c.shapes!r}")
        low, high = ASPECT_LIMITS
        if not low <= c.aspect[0] <= c.aspect[1] <= high:
            raise ValueError(f"aspect must be (min, max) with {low:g} <= min <= max <= {high:g}, got {c.aspect}")
        if not 0 <= c.light_slope < 2:
            raise ValueError(f"light_slope must be in [0, 2) so the light stays positive, got {c.light_slope}")
        if not 0 <= c.specular <= 1:
            raise ValueError(f"specular must be in [0, 1], got {c.specular}")
        if not 0 <= c.specular_scenes <= 1:
            raise ValueError(f"specular_scenes must be in [0, 1], got {c.specular_scenes}")
        if c.specular_scenes > 0 and c.specular == 0:
            raise ValueError("specular_scenes needs a highlight to show: set specular above 0 too")
        if not 0 <= c.sheen < 1:
            raise ValueError(f"sheen must be in [0, 1) so the product's colour stays positive, got {c.sheen}")
        if not 0 <= c.grain < 0.5:
            raise ValueError(f"grain must be in [0, 0.5) so the product's colour stays positive, got {c.grain}")

    def example(self, seed: int, draw: int = 0) -> Example:
        """Clip ``seed``. ``draw`` picks the realisation of what its conditioning leaves open (the specular
        highlight and the sheen): 0 is the clip itself; any other number redraws only that, keeping template,
        mask, photo and paste, as a sampler drawing from the true distribution would (``eval.sampler_oracle``)."""
        if draw < 0:
            raise ValueError(f"draw must be >= 0, got {draw}")
        c = self.config
        rng = np.random.default_rng(seed)
        s = c.supersample
        H, W, F = c.height * s, c.width * s, c.frames
        ys, xs = np.meshgrid((np.arange(H) + 0.5) / s, (np.arange(W) + 0.5) / s, indexing="ij")

        # Background: gradient between two colours plus a static texture; the camera shakes.
        ca, cb = _random_color(rng), _random_color(rng)
        theta = rng.uniform(0, 2 * math.pi)
        texture = rng.normal(0, c.texture_std, size=(c.height + 4, c.width + 4, 3)).astype(np.float32)
        shake = rng.normal(0, c.shake_px, size=(F, 2))
        shake[0] = 0.0

        # Product trajectory: pan between two points, zoom, rotate.
        size0 = rng.uniform(*c.product_size)
        zoom = 1 + rng.uniform(-c.max_zoom, c.max_zoom)
        size1 = float(np.clip(size0 * zoom, c.product_size[0] * 0.8, c.product_size[1] * 1.1))
        margin = max(size0, size1) / 2 * 1.2
        p0 = np.array([rng.uniform(margin, c.width - margin), rng.uniform(margin, c.height - margin)])
        p1 = np.array([rng.uniform(margin, c.width - margin), rng.uniform(margin, c.height - margin)])
        rot0 = rng.uniform(-0.2, 0.2)  # near upright, like the reference photo
        rot1 = rot0 + math.radians(rng.uniform(-c.max_rotation_deg, c.max_rotation_deg))

        product_a = _random_product(rng, shapes=c.shapes, aspect=c.aspect)
        product_b = _random_product(rng, shape=product_a.shape)
        product_b = Product(product_b.shape, product_b.pattern, product_b.colors, product_b.pattern_angle,
                            product_b.pattern_period, product_a.aspect)

        # The scene light drifts over the clip; the product photo matches the first frame's light,
        # so the new product's brightness in every frame follows from the template's background.
        gain = np.ones(F)
        for f in range(1, F):
            gain[f] = float(np.clip(gain[f - 1] + rng.normal(0, 0.04), *c.light_gain))
        field = self._light_field(rng, xs, ys) if c.light_slope > 0 else 1.0  # no draws: old clips stay bit-exact
        # Their own streams, so every other draw (template, reference, paste) is the same with or without
        # them: the scene's light is part of the clip ([seed, 0]); the new product's spot is what a redraw
        # changes ([seed, 1 + draw]).
        old_highlight, highlight = None, None
        if c.specular_scenes > 0:
            scene = np.random.default_rng([seed, 0])
            if scene.uniform() < c.specular_scenes:
                strength = scene.uniform(c.specular / 2, c.specular)
                old_highlight = self._highlight(scene, strength)
                highlight = self._highlight(np.random.default_rng([seed, 1 + draw]), strength)
        elif c.specular > 0:
            highlight = self._highlight(np.random.default_rng([seed, 1 + draw]))
        # A stream of its own too, so adding a sheen leaves the highlight where it was.
        sheen = self._sheen(np.random.default_rng([seed, 1 + draw, 1])) if c.sheen > 0 else None
        grain = self._grain(np.random.default_rng([seed, 1 + draw, 2])) if c.grain > 0 else None

        template = np.empty((F, H, W, 3), np.float32)
        target = np.empty((F, H, W, 3), np.float32)
        cover_all = np.empty((F, H, W), np.float32)
        for f in range(F):
            a = f / (F - 1)
            # World coordinates seen by this frame's (shaken) camera.
            wx, wy = xs + shake[f, 0], ys + shake[f, 1]
            d = np.cos(theta) * (wx / c.width - 0.5) + np.sin(theta) * (wy / c.height - 0.5)
            t = np.clip(d + 0.5, 0, 1)[..., None]
            bg = (1 - t) * ca + t * cb
            tx = np.clip(np.floor(wx + 2).astype(int), 0, texture.shape[1] - 1)
            ty = np.clip(np.floor(wy + 2).astype(int), 0, texture.shape[0] - 1)
            bg = bg + texture[ty, tx]

            centre = (1 - a) * p0 + a * p1
            half = ((1 - a) * size0 + a * size1) / 2
            rot = (1 - a) * rot0 + a * rot1
            dx, dy = wx - centre[0], wy - centre[1]
            cr, sr = math.cos(rot), math.sin(rot)
            u = (cr * dx + sr * dy) / half
            v = (-sr * dx + cr * dy) / half
            rgb_a, cover = _render_product(product_a, u, v)
            rgb_b, _ = _render_product(product_b, u, v)
            if sheen is not None:
                rgb_b = rgb_b * sheen(u, v)
            if grain is not None:
                rgb_b = rgb_b * grain(u, v)
            if old_highlight is not None:
                rgb_a = rgb_a + old_highlight(u, v)
            if highlight is not None:
                rgb_b = rgb_b + highlight(u, v)
            k = cover[..., None]
            light = gain[f] * field
            template[f] = np.clip(((1 - k) * bg + k * rgb_a) * light, 0, 1)
            target[f] = np.clip(((1 - k) * bg + k * rgb_b) * light, 0, 1)
            cover_all[f] = cover

        template = _box_downsample(template, s)
        target = _box_downsample(target, s)
        mask = (_box_downsample(cover_all, s) >= 0.5).astype(np.float32)
        reference_big = self._reference(product_b, rng)
        reference = _box_downsample(reference_big[None], s)[0]
        paste = None
        if c.paste != "aligned_paste":
            paste = supersampled_warp_paste(reference_big, cover_all, mask,
                                            template if c.paste in LIT_PASTES else None)
        return Example(template=template, mask=mask, reference=reference, target=target, seed=seed, paste=paste)

    def _light_field(self, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The clip's fixed directional light [H, W, 1] over the supersampled scene coordinates ``xs``, ``ys``."""
        c = self.config
        phi = rng.uniform(0, 2 * math.pi)
        slope = rng.uniform(-c.light_slope, c.light_slope)
        d = (math.cos(phi) * (xs - c.width / 2) + math.sin(phi) * (ys - c.height / 2)) / max(c.height, c.width)
        return (1 + slope * d)[..., None].astype(np.float32)

    def _highlight(self, rng: np.random.Generator, strength: float | None = None):
        """A specular spot on a product: ``(u, v) -> [..., 1]`` added to its colour; its strength is drawn
        unless the scene's light sets it."""
        hu, hv = rng.uniform(-0.5, 0.5, size=2)
        radius = rng.uniform(0.3, 0.45)
        if strength is None:
            strength = rng.uniform(self.config.specular / 2, self.config.specular)

        def spot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return (strength * np.exp(-((u - hu) ** 2 + (v - hv) ** 2) / (2 * radius ** 2)))[..., None].astype(
                np.float32)

        return spot

    def _sheen(self, rng: np.random.Generator):
        """A sheen on a product: ``(u, v) -> [..., 1]``, the factor its colour is scaled by."""
        phi = rng.uniform(0, 2 * math.pi)
        strength = rng.uniform(self.config.sheen / 2, self.config.sheen)
        cu, cv = math.cos(phi), math.sin(phi)

        def factor(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return (1 + strength * np.clip(cu * u + cv * v, -1, 1))[..., None].astype(np.float32)

        return factor

    def _grain(self, rng: np.random.Generator):
        """A grain on a product: ``(u, v) -> [..., 1]``, the factor its colour is scaled by; a clipped Gaussian
        field, bilinear between its cells, in the product's own coordinates (so it zooms with the product)."""
        cells = 2 * GRAIN_EXTENT / GRAIN_CELL_UNITS
        field = np.clip(rng.normal(0.0, 1.0, size=(int(cells) + 2, int(cells) + 2)), -2.0, 2.0).astype(np.float32)
        strength = rng.uniform(self.config.grain / 2, self.config.grain)

        def factor(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            gu = np.clip((u + GRAIN_EXTENT) / GRAIN_CELL_UNITS, 0, field.shape[1] - 1.001)
            gv = np.clip((v + GRAIN_EXTENT) / GRAIN_CELL_UNITS, 0, field.shape[0] - 1.001)
            iu, iv = gu.astype(int), gv.astype(int)
            fu, fv = gu - iu, gv - iv
            n = ((1 - fv) * ((1 - fu) * field[iv, iu] + fu * field[iv, iu + 1])
                 + fv * ((1 - fu) * field[iv + 1, iu] + fu * field[iv + 1, iu + 1]))
            return (1 + strength * n)[..., None].astype(np.float32)

        return factor

    def _reference(self, product: Product, rng: np.random.Generator) -> np.ndarray:
        """Product B upright and centred on a plain light backdrop, as a product photo would be, at the
        supersampled size."""
        c = self.config
        s = c.supersample
        H, W = c.height * s, c.width * s
        ys, xs = np.meshgrid((np.arange(H) + 0.5) / s, (np.arange(W) + 0.5) / s, indexing="ij")
        half = 0.4 * min(c.height, c.width)
        u = (xs - c.width / 2) / half
        v = (ys - c.height / 2) / half
        rgb, cover = _render_product(product, u, v)
        backdrop = np.full(3, rng.uniform(0.85, 1.0), np.float32)
        return ((1 - cover[..., None]) * backdrop + cover[..., None] * rgb).astype(np.float32)

    def batch(self, seeds, draw: int = 0) -> dict[str, np.ndarray]:
        """Stack examples: template/target [B,F,H,W,3], mask [B,F,H,W], reference [B,H,W,3]."""
        exs = [self.example(int(sd), draw) for sd in seeds]
        batch = {key: np.stack([getattr(e, key) for e in exs]) for key in ("template", "mask", "reference", "target")}
        if exs and exs[0].paste is not None:  # the config renders its own paste (warp_paste)
            batch["paste"] = np.stack([e.paste for e in exs])
        return batch
