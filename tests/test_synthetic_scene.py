"""The training generator's scene options: which silhouettes, their aspect, a directional light, and what the
conditioning leaves open (a specular highlight, a sheen, a grain)."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from pvtt_train.aligned_warp import shape_moments
from pvtt_train.data.batches import training_data_config
from pvtt_train.data.shapes import SHAPES
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.paths import SHIPPED_TEACHER

SEEDS = range(8)
STILL = SyntheticConfig(shake_px=0.0)  # a still camera, so frame-to-frame ratios are the light alone


def _background(ex, px: int = 2) -> np.ndarray:
    """Pixels at least ``px`` away from the product in every frame."""
    near = np.stack([~binary_erosion(~m.astype(bool), iterations=px) for m in ex.mask]).any(0)
    return ~near


def test_directional_light_is_a_plane_across_the_frame():
    flat = SyntheticVideoGenerator(STILL)
    lit = SyntheticVideoGenerator(dataclasses.replace(STILL, light_slope=0.6))
    spans = []
    for seed in SEEDS:
        a, b = flat.example(seed), lit.example(seed)
        keep = _background(a) & (a.template.max(-1) < 0.99).all(0) & (b.template.max(-1) < 0.99).all(0)
        ratio = (b.template[0] / np.maximum(a.template[0], 1e-3)).mean(-1)[keep]  # the light field, frame 0
        ys, xs = np.nonzero(keep)
        design = np.stack([np.ones_like(xs), xs, ys], axis=1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, ratio, rcond=None)
        assert np.abs(design @ coef - ratio).max() < 2e-3, seed  # a plane, up to float32 rounding
        spans.append(ratio.max() - ratio.min())
    assert max(spans) > 0.2  # and a real gradient on some clips, not a constant


def test_without_a_slope_the_light_is_one_gain_per_frame():
    gen = SyntheticVideoGenerator(STILL)
    for seed in SEEDS:
        ex = gen.example(seed)
        keep = _background(ex) & (ex.template.max(-1) < 0.99).all(0)
        ratio = (ex.template[-1] / ex.template[0]).mean(-1)[keep]
        assert ratio.std() < 1e-4, seed


def test_light_lights_template_and_truth_alike():
    gen = SyntheticVideoGenerator(dataclasses.replace(STILL, light_slope=0.6))
    for seed in SEEDS:
        ex = gen.example(seed)
        outside = _background(ex)
        np.testing.assert_array_equal(ex.template[:, outside], ex.target[:, outside])


def _assert_same_conditioning(clip, redrawn) -> None:
    """Everything a model is given (template, mask, photo, paste) is the same in both examples."""
    for name in ("template", "mask", "reference", "paste"):
        np.testing.assert_array_equal(getattr(clip, name), getattr(redrawn, name))


def _without_and_with(**option):
    """(seed, clip without ``option``, clip with it) for each seed, once what a model is given (template, mask,
    product photo) is checked to be the same, draw for draw."""
    plain, other = SyntheticVideoGenerator(STILL), SyntheticVideoGenerator(dataclasses.replace(STILL, **option))
    for seed in SEEDS:
        a, b = plain.example(seed), other.example(seed)
        for name in ("template", "mask", "reference"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        yield seed, a, b


def test_a_specular_highlight_brightens_only_the_new_product_and_nothing_it_is_conditioned_on():
    for seed, a, b in _without_and_with(specular=0.6):
        gain = b.target - a.target
        assert gain.min() >= 0.0  # only brighter
        np.testing.assert_array_equal(gain[:, _background(a, px=1)], 0.0)  # never off the product
        assert (gain.max(axis=(1, 2, 3)) > 0.05).all(), seed  # and on it in every frame of the clip


def test_the_highlight_sits_at_another_place_in_each_clip():
    shiny = SyntheticVideoGenerator(dataclasses.replace(STILL, specular=0.6, max_rotation_deg=0.0, max_zoom=0.0))
    plain = SyntheticVideoGenerator(dataclasses.replace(STILL, max_rotation_deg=0.0, max_zoom=0.0))
    offsets = []
    for seed in SEEDS:
        a, b = plain.example(seed), shiny.example(seed)
        gain = (b.target[0] - a.target[0]).sum(-1)
        ys, xs = np.nonzero(a.mask[0])
        peak = np.unravel_index(gain.argmax(), gain.shape)
        offsets.append((peak[0] - ys.mean(), peak[1] - xs.mean()))  # from the product's centre
    assert len({(round(dy), round(dx)) for dy, dx in offsets}) >= 3, offsets


def test_a_redraw_moves_only_the_highlight_and_draw_0_is_the_clip_itself():
    shiny = SyntheticVideoGenerator(dataclasses.replace(STILL, specular=0.6, paste="supersampled_warp_lit"))
    for seed in SEEDS:
        clip, same, redrawn = shiny.example(seed), shiny.example(seed, draw=0), shiny.example(seed, draw=3)
        np.testing.assert_array_equal(clip.target, same.target)
        _assert_same_conditioning(clip, redrawn)
        changed = np.abs(redrawn.target - clip.target).max(axis=-1)
        assert changed.max() > 0.05, seed  # the highlight moved or changed strength
        np.testing.assert_array_equal(changed[:, _background(clip, px=1)], 0.0)  # and nothing else did


def test_a_redraw_of_a_clip_without_a_highlight_is_the_clip_and_a_negative_draw_is_refused():
    plain = SyntheticVideoGenerator(STILL)
    np.testing.assert_array_equal(plain.example(5).target, plain.example(5, draw=2).target)
    with pytest.raises(ValueError, match="draw must be >= 0"):
        plain.example(5, draw=-1)


def test_with_specular_scenes_the_template_shows_whether_the_new_product_has_a_highlight_and_how_bright():
    plain = SyntheticVideoGenerator(STILL)
    scenes = SyntheticVideoGenerator(dataclasses.replace(STILL, specular=0.6, specular_scenes=0.5))
    lit = 0
    for seed in range(16):
        a, b = plain.example(seed), scenes.example(seed)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.reference, b.reference)
        old_gain, new_gain = b.template - a.template, b.target - a.target
        assert old_gain.min() >= 0.0 and new_gain.min() >= 0.0
        if old_gain.max() == 0:  # a matte scene: no highlight anywhere
            np.testing.assert_array_equal(b.target, a.target)
            continue
        lit += 1
        # the same light on both products: peaks of the same strength (up to the pixel grid and clipping)
        assert new_gain.max() > 0.05 and abs(old_gain.max() - new_gain.max()) < 0.15, seed
        np.testing.assert_array_equal(old_gain[:, _background(a, px=1)], 0.0)
    assert 3 <= lit <= 13, lit  # about half the clips


def test_with_specular_scenes_a_redraw_moves_only_the_new_products_highlight():
    scenes = SyntheticVideoGenerator(dataclasses.replace(STILL, specular=0.6, specular_scenes=1.0,
                                                         paste="supersampled_warp_lit"))
    for seed in SEEDS:
        clip, redrawn = scenes.example(seed), scenes.example(seed, draw=2)
        _assert_same_conditioning(clip, redrawn)  # the template's highlight is conditioning
        assert np.abs(redrawn.target - clip.target).max() > 0.05, seed


def test_a_sheen_brightens_one_side_of_the_new_product_and_darkens_the_other_and_nothing_it_is_conditioned_on():
    for seed, a, b in _without_and_with(sheen=0.6):
        change = (b.target - a.target).sum(-1)
        np.testing.assert_array_equal(change[:, _background(a, px=1)], 0.0)  # never off the product
        assert change.max() > 0.05 and change.min() < -0.05, seed  # one side brighter, the other darker
        inside = a.mask[0] > 0.5
        ys, xs = np.nonzero(inside)
        design = np.stack([np.ones_like(xs), xs, ys], axis=1).astype(np.float64)
        ratio = (b.target[0] + 1e-3) / (a.target[0] + 1e-3)
        bright = ratio[inside].mean(-1) > 1  # the bright side is a half-plane across the product: a line splits it
        coef, *_ = np.linalg.lstsq(design, np.where(bright, 1.0, -1.0), rcond=None)
        assert ((design @ coef > 0) == bright).mean() > 0.9, seed


def test_the_sheen_faces_another_way_in_each_clip_and_a_redraw_turns_only_it():
    sheen = SyntheticVideoGenerator(dataclasses.replace(STILL, sheen=0.6, paste="supersampled_warp_lit"))
    plain = SyntheticVideoGenerator(dataclasses.replace(STILL, paste="supersampled_warp_lit"))
    sides = set()
    for seed in SEEDS:
        base, clip, redrawn = plain.example(seed), sheen.example(seed), sheen.example(seed, draw=2)
        _assert_same_conditioning(clip, redrawn)
        assert np.abs(redrawn.target - clip.target).max() > 0.05, seed
        ys, xs = np.nonzero(base.mask[0])
        gain = (clip.target[0] - base.target[0]).sum(-1)[ys, xs]
        # the side the sheen lights, as the sign of the gain's correlation with x and with y
        sides.add((bool(np.corrcoef(xs, gain)[0, 1] > 0), bool(np.corrcoef(ys, gain)[0, 1] > 0)))
    assert len(sides) >= 3, sides


def test_a_sheen_leaves_the_highlight_where_it_was():
    plain, glossy = (SyntheticVideoGenerator(dataclasses.replace(STILL, sheen=sheen)) for sheen in (0.0, 0.3))
    spot, both = (SyntheticVideoGenerator(dataclasses.replace(STILL, specular=0.6, sheen=sheen))
                  for sheen in (0.0, 0.3))
    for seed in SEEDS:
        alone = (spot.example(seed).target - plain.example(seed).target).ravel()
        with_sheen = (both.example(seed).target - glossy.example(seed).target).ravel()
        # the spot is the same with the sheen under it (up to clipping): its gain lies where it lay alone
        assert np.corrcoef(alone, with_sheen)[0, 1] > 0.9, seed


def test_a_grain_varies_the_new_product_pixel_by_pixel_and_nothing_it_is_conditioned_on():
    for seed, a, b in _without_and_with(grain=0.4):
        change = np.abs(b.target - a.target).sum(-1)
        np.testing.assert_array_equal(change[:, _background(a, px=1)], 0.0)  # never off the product
        inner = binary_erosion(a.mask[0].astype(bool))
        ratio = ((b.target[0] + 1e-3) / (a.target[0] + 1e-3)).mean(-1)[inner]
        ys, xs = np.nonzero(inner)
        design = np.stack([np.ones_like(xs), xs, ys], axis=1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, ratio, rcond=None)
        # pixel-scale detail: a plane across the product (what a sheen is) explains little of it
        assert ratio.std() > 0.03 and np.std(ratio - design @ coef) > 0.6 * ratio.std(), seed


def test_a_redraw_changes_only_the_grain_and_its_pattern_with_it():
    grain = SyntheticVideoGenerator(dataclasses.replace(STILL, grain=0.4, paste="supersampled_warp_lit"))
    plain = SyntheticVideoGenerator(dataclasses.replace(STILL, paste="supersampled_warp_lit"))
    for seed in SEEDS:
        base, clip, redrawn = plain.example(seed), grain.example(seed), grain.example(seed, draw=2)
        _assert_same_conditioning(clip, redrawn)
        inner = binary_erosion(base.mask[0].astype(bool))
        first, second = ((ex.target[0] - base.target[0]).sum(-1)[inner] for ex in (clip, redrawn))
        assert abs(np.corrcoef(first, second)[0, 1]) < 0.8, seed  # another pattern, not the same one rescaled


def test_the_grain_stays_on_the_product_from_frame_to_frame():
    """Fixed in the product's coordinates: the second frame's grain, moved back by the product's step between the
    frames (to the nearest pixel), is the first frame's (a grain drawn anew per frame would not correlate)."""
    steady = dataclasses.replace(STILL, max_zoom=0.0, max_rotation_deg=0.0)
    plain, grain = SyntheticVideoGenerator(steady), SyntheticVideoGenerator(dataclasses.replace(steady, grain=0.4))
    correlations = []
    for seed in range(16):
        a, b = plain.example(seed), grain.example(seed)
        change = (b.target - a.target).sum(-1)
        step = max(((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)),
                   key=lambda s: (a.mask[0] * np.roll(a.mask[1], s, (0, 1))).sum())
        both = binary_erosion(a.mask[0].astype(bool)) & binary_erosion(np.roll(a.mask[1], step, (0, 1)).astype(bool))
        correlations.append(np.corrcoef(change[0][both], np.roll(change[1], step, (0, 1))[both])[0, 1])
    assert np.median(correlations) > 0.6, np.round(correlations, 2)


def test_shapes_and_aspect_give_masks_with_an_orientation():
    elongated = SyntheticVideoGenerator(SyntheticConfig(shapes=("ellipse", "rounded"), aspect=(0.5, 0.6)))
    round_ = SyntheticVideoGenerator(SyntheticConfig(shapes=("circle",)))
    for seed in SEEDS:
        long_mask = elongated.example(seed).mask[0]
        round_mask = round_.example(seed).mask[0]
        assert shape_moments(long_mask)[3] > 0.3, seed
        assert shape_moments(round_mask)[3] < 0.15, seed  # a 5-pixel circle is only round up to its pixels


def test_elongated_products_make_the_warped_paste_right_inside():
    """The reason for ``shapes``: the mask of an elongated product shows its turn, so the photo's pattern lands
    where the truth has it; on a circle or square it cannot (measured at the mask's interior pixels)."""

    def interior_psnr(config):
        gen = SyntheticVideoGenerator(dataclasses.replace(config, paste="supersampled_warp_lit"))
        err = count = 0.0
        for seed in SEEDS:
            ex = gen.example(seed)
            inner = np.stack([binary_erosion(m.astype(bool)) for m in ex.mask])
            err += ((ex.paste - ex.target) ** 2)[inner].sum()
            count += inner.sum() * 3
        return 10 * np.log10(count / err)

    symmetric = interior_psnr(SyntheticConfig(shapes=("square", "circle", "diamond")))
    elongated = interior_psnr(SyntheticConfig(shapes=("ellipse", "rounded"), aspect=(0.5, 0.75)))
    assert elongated > symmetric + 5.0, (elongated, symmetric)


def test_default_config_keeps_every_shape():
    gen = SyntheticVideoGenerator(SyntheticConfig())
    aniso = [shape_moments(gen.example(seed).mask[0])[3] for seed in range(24)]
    assert min(aniso) < 0.05 and max(aniso) > 0.2  # round and elongated products both occur


@pytest.mark.parametrize("kwargs", [dict(shapes=()), dict(shapes=("hexagon",)), dict(aspect=(0.2, 0.5)),
                                    dict(aspect=(0.8, 0.7)), dict(light_slope=-0.1), dict(light_slope=2.0),
                                    dict(specular=-0.1), dict(specular=1.5), dict(specular_scenes=0.5),
                                    dict(specular_scenes=1.5, specular=0.6), dict(sheen=-0.1), dict(sheen=1.0),
                                    dict(grain=-0.1), dict(grain=0.5)])
def test_bad_scene_options_are_rejected_upfront(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SyntheticVideoGenerator(SyntheticConfig(**kwargs))


def test_scene_options_round_trip_through_checkpoint_provenance():
    config = SyntheticConfig(paste="supersampled_warp_lit", shapes=("ellipse", "rounded"), aspect=(0.5, 0.75),
                             light_slope=0.3, specular=0.4, specular_scenes=0.5, sheen=0.8, grain=0.3)
    recorded = json.loads(json.dumps(config.to_dict()))  # as a checkpoint's JSON metadata holds it
    loaded = SimpleNamespace(metadata={"provenance": {"data": recorded}}, path=Path("teacher.safetensors"))
    assert training_data_config(loaded) == config


def test_checkpoints_from_before_the_scene_options_read_as_the_old_scene():
    teacher = load_checkpoint(SHIPPED_TEACHER)
    assert "shapes" not in teacher.metadata["provenance"]["data"]
    config = training_data_config(teacher)
    assert (config.shapes, config.aspect, config.light_slope, config.specular, config.specular_scenes,
            config.sheen, config.grain) == (SHAPES, (0.75, 1.0), 0.0, 0.0, 0.0, 0.0, 0.0)
