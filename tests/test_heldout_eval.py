"""The held-out evaluation (issue 14): its independent clip generator, its metrics on cases with known
answers, its baselines, and ``python -m pvtt_train heldout-eval`` end to end with the shipped student."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from pvtt_train.__main__ import main
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.errors import InputError
from pvtt_train.eval import heldout_metrics as hm
from pvtt_train.eval import heldout_report, node_pack
from pvtt_train.eval.heldout_baselines import flat_fill, lit_paste, paste
from pvtt_train.eval.heldout_data import (
    SHAPES,
    HeldoutClipGenerator,
    HeldoutConfig,
    print_text,
)
from pvtt_train.eval.heldout_report import CELL, HEADER
from pvtt_train.paths import SHIPPED_MODELS
from pvtt_train.pipeline import frame_windows
from pvtt_train.sampling.composite import grow_mask

SMALL = HeldoutConfig(frames=5, height=64, width=64)


@pytest.fixture(scope="module")
def clips():
    generator = HeldoutClipGenerator(SMALL)
    return [generator.clip(seed) for seed in range(4)]


# --- the generator --------------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_seeds_differ(clips):
    again = HeldoutClipGenerator(SMALL).clip(0)
    for key in ("template", "mask", "product", "truth"):
        np.testing.assert_array_equal(getattr(again, key), getattr(clips[0], key))
    assert np.abs(clips[0].template - clips[1].template).mean() > 0.05
    assert clips[0].template.shape == (5, 64, 64, 3) and clips[0].product.shape == (64, 64, 3)
    assert all(c.template.dtype == np.float32 and 0 <= c.template.min() and c.template.max() <= 1 for c in clips)


def test_a_longer_clip_keeps_the_same_product_and_motion():
    short = HeldoutClipGenerator(HeldoutConfig(frames=5, height=64, width=64)).clip(3)
    long = HeldoutClipGenerator(HeldoutConfig(frames=9, height=64, width=64)).clip(3)
    assert (short.shape, short.rotation_deg, short.scale_ratio) == (long.shape, long.rotation_deg, long.scale_ratio)
    np.testing.assert_array_equal(short.product, long.product)
    np.testing.assert_array_equal(short.mask[0], long.mask[0])  # first frames coincide


def test_held_out_clips_differ_from_the_training_generator(clips):
    """Photo textures and printed labels carry far more fine detail than training's flat two-colour patterns."""
    training = SyntheticVideoGenerator(SyntheticConfig(frames=5, height=64, width=64, product_size=(20, 30)))

    def product_detail(truth, mask):
        return hm.laplacian_energy(torch.from_numpy(truth), grow_mask(torch.from_numpy(mask), -2) > 0.5)

    held_out = [product_detail(c.truth, c.mask) for c in clips]
    trained = [product_detail(e.target, e.mask) for e in (training.example(s) for s in range(4))]
    assert min(held_out) > 2 * max(trained), (held_out, trained)
    assert {c.shape for c in clips} <= set(SHAPES) and not {c.shape for c in clips} & {"square", "circle"}


def test_masks_follow_the_product_and_its_scale(clips):
    for c in clips:
        area = c.mask.sum((1, 2))
        assert set(np.unique(c.mask)) <= {0.0, 1.0}
        assert (area > 20).all() and (area < 0.6 * 64 * 64).all()
        # The mask's area follows the product's declared size change (area ~ scale squared).
        assert area[-1] / area[0] == pytest.approx(c.scale_ratio ** 2, rel=0.1)
        # Old and new product differ over most of the mask: it marks the product, not its surroundings.
        changed = np.abs(c.template - c.truth).max(-1) > 0.05
        assert changed[c.mask > 0.5].mean() > 0.8


def test_truth_differs_from_the_template_only_inside_or_next_to_the_mask(clips):
    for c in clips:
        near = grow_mask(torch.from_numpy(c.mask), 1).numpy() > 0.5
        difference = np.abs(c.template - c.truth).max(-1)
        assert difference[~near].max() == 0.0
        assert difference[c.mask > 0.5].mean() > 0.1


def test_rotation_reaches_far_beyond_training():
    generator = HeldoutClipGenerator(HeldoutConfig(frames=2, height=32, width=32))
    turns = [abs(generator.clip(seed).rotation_deg) for seed in range(12)]
    assert max(turns) > 45 > SyntheticConfig().max_rotation_deg and max(turns) <= 90


def test_printed_text_lands_inside_its_box():
    image = np.full((60, 200, 3), 0.5, np.float32)
    print_text(image, "PVTT", centre_y=30, width=120, height=20, font=cv2.FONT_HERSHEY_SIMPLEX,
                colour=np.zeros(3, np.float32), thickness=2)
    ink = np.abs(image - 0.5).max(-1) > 0.1
    ys, xs = np.nonzero(ink)
    assert ink.sum() > 100
    assert xs.min() >= 100 - 60 - 2 and xs.max() <= 100 + 60 + 2 and ys.min() >= 30 - 10 - 2 and ys.max() <= 30 + 12


# --- metrics on cases with known answers ----------------------------------------------------------------------

def _scene(frames=20, size=16):
    torch.manual_seed(0)
    truth = torch.rand(frames, size, size, 3) * 0.5 + 0.25
    mask = torch.zeros(frames, size, size)
    mask[:, 4:12, 4:12] = 1
    return truth, mask


def test_product_psnr_of_a_known_error():
    truth, mask = _scene()
    output = truth.clone()
    output[mask > 0.5] += 0.1  # every product pixel off by 0.1: MSE 0.01, 20 dB; outside does not count
    output[mask <= 0.5] = 0.0
    assert hm.product_psnr(output, truth, mask) == pytest.approx(20.0, abs=1e-3)
    assert hm.product_ssim(truth, truth, mask) == pytest.approx(1.0, abs=1e-4)
    assert hm.product_ssim(output * 0 + 0.5, truth, mask) < 0.2


def test_background_psnr_against_the_template():
    template, mask = _scene()
    exact = template.clone()
    exact[mask > 0.5] = 0.0  # the product region does not count
    assert hm.background_psnr(exact, template, mask) == 100.0
    off = template.clone()
    off[mask <= 0.5] += 0.01  # MSE 1e-4 outside the mask: 40 dB
    assert hm.background_psnr(off, template, mask) == pytest.approx(40.0, abs=1e-3)


def test_detail_ratio_of_a_blurred_a_flat_and_an_identical_copy():
    truth, mask = _scene(frames=3, size=32)
    mask[:, 4:28, 4:28] = 1
    blurred = torch.from_numpy(np.stack([cv2.GaussianBlur(f.numpy(), (0, 0), 1.5) for f in truth]))
    assert hm.detail_ratio(truth, truth, mask) == pytest.approx(1.0)
    assert hm.detail_ratio(blurred, truth, mask) < 0.2
    assert hm.detail_ratio(torch.full_like(truth, 0.4), truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert hm.detail_ratio(truth + (truth - blurred), truth, mask) > 1.5  # over-sharpened


def test_seams_are_where_the_pipeline_starts_a_new_window():
    assert frame_windows(33, 9, 0) == [(0, 9), (9, 18), (18, 27), (24, 33)]
    assert hm.seam_frames(33, 9, overlap=0) == [9, 18, 24, 25, 26, 27]  # the end-aligned window cross-fades too
    assert frame_windows(33, 9, 3)[:2] == [(0, 9), (6, 15)]
    assert hm.seam_frames(33, 9)[:4] == [6, 7, 8, 9]  # the default overlap of 3: entering it to leaving it
    assert hm.seam_frames(9, 9) == []


def test_seam_flicker_of_steady_motion_and_of_a_jump_at_the_seam():
    frames = 18  # windows of 9 that touch: [0, 9), [9, 18); the seam is the step into frame 9
    _, mask = _scene(frames)
    ramp = torch.linspace(0.1, 0.6, frames)[:, None, None, None].expand(frames, 16, 16, 3).clone()
    assert hm.seam_flicker_ratio(ramp, mask, window=9) == pytest.approx(1.0, abs=1e-4)
    jumpy = ramp.clone()
    jumpy[9:] += 0.1  # a jump where the second window starts
    step = 0.5 / (frames - 1)
    assert hm.seam_flicker_ratio(jumpy, mask, window=9, overlap=0) == pytest.approx((step + 0.1) / step, rel=1e-4)
    assert math.isnan(hm.seam_flicker_ratio(ramp[:9], mask[:9], window=9))


# --- baselines ------------------------------------------------------------------------------------------------

def test_baselines_change_only_the_mask(clips):
    c = clips[0]
    for fill in (paste(c.template, c.mask, c.product), lit_paste(c.template, c.mask, c.product),
                 flat_fill(c.template, c.mask, c.product)):
        outside = c.mask <= 0.5
        np.testing.assert_array_equal(fill[outside], c.template[outside])
        assert np.abs(fill - c.template)[c.mask > 0.5].mean() > 0.02
    flat = flat_fill(c.template, c.mask, c.product)[c.mask > 0.5]
    assert np.ptp(flat, axis=0).max() == 0.0  # one colour


def test_the_lit_paste_follows_the_template_light_the_plain_paste_does_not(clips):
    c = clips[0]
    gains = np.linspace(1.0, 0.7, len(c.template)).astype(np.float32)[:, None, None, None]
    darker = np.clip(c.template * gains, 0, 1)
    inside = c.mask > 0.5
    plain, lit = paste(darker, c.mask, c.product), lit_paste(darker, c.mask, c.product)
    np.testing.assert_array_equal(plain[inside], paste(c.template, c.mask, c.product)[inside])
    first, last = lit[0][inside[0]].mean(), lit[-1][inside[-1]].mean()
    ratio = last / first * plain[0][inside[0]].mean() / plain[-1][inside[-1]].mean()
    assert ratio == pytest.approx(0.7 * float(lit_gain_of(c)), rel=0.03)


def lit_gain_of(c) -> float:
    """The clip's own light drift from its first to its last frame, as the pipeline measures it."""
    from pvtt_train.light_match import clip_light_gain

    return float(clip_light_gain(torch.from_numpy(c.template), torch.from_numpy(c.mask))[-1])


# --- through the nodes and the CLI ----------------------------------------------------------------------------

def test_loader_refuses_an_encoder_with_the_nodes_message():
    with pytest.raises(InputError, match="one of PVTT's encoders"):
        node_pack.load_model(SHIPPED_MODELS / "pvtt_identity_encoder.safetensors")


def test_cli_end_to_end_on_two_tiny_clips(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "heldout-eval", "--clips", "2", "--size", "64", "--frames", "18",
                     "--model", str(SHIPPED_MODELS / "pvtt_student_4step.safetensors"),
                     "--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["pvtt_student_4step", "paste", "lit_paste", "flat_fill", "template"]
    assert report["clips"] == 2 and report["video"] == {"frames": 18, "height": 64, "width": 64}
    student = methods["pvtt_student_4step"]
    assert student["window_frames"] == 9 and len(report["per_clip"]) == 2
    assert 5 < student["product_psnr"] < 40 and 0 < student["product_ssim"] < 1
    assert 0 <= student["detail_ratio"] < 1 and student["seam_flicker_ratio"] > 0
    assert student["background_psnr"] == 100  # Background Preserve feathers inward: the outside is the template
    assert all(methods[b]["background_psnr"] == 100 for b in ("paste", "lit_paste", "flat_fill", "template"))
    assert methods["template"]["background_psnr_truth"] < 100  # the ceiling of the truth-based score
    assert methods["flat_fill"]["detail_ratio"] == pytest.approx(0.0, abs=1e-9)
    mean = np.mean([c["scores"]["paste"]["product_psnr"] for c in report["per_clip"]])
    assert methods["paste"]["product_psnr"] == pytest.approx(mean)
    grid = cv2.imread(str(tmp_path / "out" / "heldout_grid.png"))
    assert grid.shape == (HEADER + 2 * (CELL + 2), 6 * (CELL + 2), 3)  # template mask product paste student truth
    table = (tmp_path / "out" / "report.md").read_text()
    assert heldout_report.markdown(report) == table  # the JSON holds everything the table shows
    assert "| pvtt_student_4step (4 steps) |" in table and "| aligned paste |" in table
    assert "report.json" in capsys.readouterr().out


def test_cli_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["heldout-eval", "--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nope.safetensors: not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
