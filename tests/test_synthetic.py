"""Synthetic example generator and its on-disk export."""

import json

import cv2
import numpy as np
import pytest

from pvtt_train.data.export import ExportError, export_examples, write_video
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator

SEEDS = range(12)


@pytest.fixture(scope="module")
def gen():
    return SyntheticVideoGenerator(SyntheticConfig())


@pytest.fixture(scope="module")
def examples(gen):
    return [gen.example(s) for s in SEEDS]


def dilate(mask: np.ndarray, px: int = 1) -> np.ndarray:
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in mask]).astype(bool)


def test_same_seed_is_bit_identical(gen):
    a, b = gen.example(123), SyntheticVideoGenerator(SyntheticConfig()).example(123)
    for name in ("template", "mask", "reference", "target"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.tobytes() == y.tobytes(), name


def test_different_seeds_differ(examples):
    a, b = examples[0], examples[1]
    assert np.abs(a.template - b.template).mean() > 0.05
    assert np.abs(a.reference - b.reference).mean() > 0.01
    assert not np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("frames,height,width", [(9, 16, 16), (2, 10, 10), (5, 12, 20), (13, 24, 16)])
def test_shapes_dtypes_ranges(frames, height, width):
    ex = SyntheticVideoGenerator(SyntheticConfig(frames=frames, height=height, width=width)).example(7)
    assert ex.template.shape == ex.target.shape == (frames, height, width, 3)
    assert ex.mask.shape == (frames, height, width)
    assert ex.reference.shape == (height, width, 3)
    for arr in (ex.template, ex.target, ex.mask, ex.reference):
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all()
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert ex.seed == 7


def test_mask_binary_nonempty_in_every_frame(examples):
    for ex in examples:
        assert set(np.unique(ex.mask).tolist()) <= {0.0, 1.0}
        area = ex.mask.sum(axis=(1, 2))
        assert area.min() >= 9, (ex.seed, area)  # at least a 3x3 product in every frame
        assert area.max() < ex.mask[0].size / 2  # and a product, not the whole frame


def test_mask_moves_over_time(examples):
    for ex in examples:
        changed = (ex.mask[0] != ex.mask[-1]).sum()
        assert changed >= 2, ex.seed
        # Consecutive frames differ too in most of the clip (the motion is continuous).
        moving = sum(not np.array_equal(ex.mask[i], ex.mask[i + 1]) for i in range(len(ex.mask) - 1))
        assert moving >= (len(ex.mask) - 1) // 2, ex.seed


def test_target_equals_template_outside_dilated_mask(examples):
    for ex in examples:
        outside = ~dilate(ex.mask, 1)
        assert outside.sum() > 0.5 * outside.size
        np.testing.assert_array_equal(ex.target[outside], ex.template[outside])


def test_product_changes_inside_mask(examples):
    for ex in examples:
        inside = ex.mask > 0.5
        assert np.abs(ex.target[inside] - ex.template[inside]).mean() > 0.03, ex.seed


def test_reference_shows_the_new_product_not_the_template_one(examples):
    """The reference's product colours are those of the target (B), not those of the template (A)."""
    for ex in examples:
        ref = ex.reference.reshape(-1, 3)
        backdrop = np.median(np.concatenate([ex.reference[0], ex.reference[-1]]), axis=0)
        product = ref[np.abs(ref - backdrop).max(axis=1) > 0.08]
        assert len(product) > 20, ex.seed
        inside = ex.mask > 0.5

        def mean_dist(colors, pixels):  # mean distance of each pixel to its nearest colour of the set
            d = np.abs(pixels[:, None, :] - colors[None, :, :]).sum(-1)
            return d.min(axis=1).mean()

        a_pixels, b_pixels = ex.template[inside], ex.target[inside]
        # Reference pixels are well explained by product B and clearly less well by product A.
        assert mean_dist(b_pixels, product) < mean_dist(a_pixels, product), ex.seed


@pytest.mark.parametrize("kwargs", [dict(frames=1), dict(height=4), dict(width=7), dict(frames=0)])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        SyntheticVideoGenerator(SyntheticConfig(**kwargs))


def test_config_too_small_for_product_is_rejected_upfront():
    with pytest.raises(ValueError, match="product_size"):
        SyntheticVideoGenerator(SyntheticConfig(height=8, width=8))


@pytest.mark.parametrize("kwargs", [dict(product_size=(0.0, 0.0)), dict(supersample=0)])
def test_degenerate_config_is_rejected_upfront(kwargs):
    with pytest.raises(ValueError):
        SyntheticVideoGenerator(SyntheticConfig(**kwargs))


# ---------------------------------------------------------------- export

def read_video(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    cap.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    config = SyntheticConfig(frames=5, height=16, width=20)
    folders = export_examples(out, config, seeds=[3, 4], fps=8)
    return out, config, folders


def test_export_writes_every_file(exported):
    out, config, folders = exported
    assert [f.name for f in folders] == ["00000003", "00000004"]
    assert sorted(p.name for p in out.iterdir()) == ["00000003", "00000004"]  # no temp folders left
    for folder in folders:
        for name in ("template.mp4", "mask.mp4", "target.mp4", "reference.png", "example.json"):
            assert (folder / name).is_file(), name
        for seq in ("template", "mask"):
            assert sorted(p.name for p in (folder / seq).iterdir()) == [f"{i:04d}.png" for i in range(5)]
        info = json.loads((folder / "example.json").read_text())
        assert info["seed"] == int(folder.name)
        assert (info["frames"], info["height"], info["width"], info["fps"]) == (5, 16, 20, 8.0)
        assert info["config"] == json.loads(json.dumps(config.to_dict()))


def test_export_pngs_are_exact_and_rgb(exported):
    out, config, folders = exported
    ex = SyntheticVideoGenerator(config).example(3)
    folder = folders[0]
    frame = cv2.imread(str(folder / "template" / "0002.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]  # BGR -> RGB
    np.testing.assert_array_equal(frame, np.rint(ex.template[2] * 255).astype(np.uint8))
    mask = cv2.imread(str(folder / "mask" / "0002.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.ndim == 2
    np.testing.assert_array_equal(mask, (ex.mask[2] * 255).astype(np.uint8))
    ref = cv2.imread(str(folder / "reference.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(ref, np.rint(ex.reference * 255).astype(np.uint8))


def test_export_videos_read_back_close(exported):
    out, config, folders = exported
    ex = SyntheticVideoGenerator(config).example(4)
    template = read_video(folders[1] / "template.mp4")
    assert template.shape == (5, 16, 20, 3)
    # Lossy, but the colours (RGB order included) survive: mean error of a few levels.
    assert np.abs(template / 255.0 - ex.template).mean() < 0.06
    mask = read_video(folders[1] / "mask.mp4").mean(-1) / 255.0
    assert ((mask > 0.5) == (ex.mask > 0.5)).mean() > 0.95
    assert read_video(folders[1] / "target.mp4").shape == (5, 16, 20, 3)


def test_export_is_resumable_and_replaces_incomplete(tmp_path):
    config = SyntheticConfig(frames=3, height=16, width=16)
    [folder] = export_examples(tmp_path, config, seeds=[5])
    stamp = (folder / "template.mp4").stat().st_mtime_ns
    export_examples(tmp_path, config, seeds=[5])  # complete and matching: kept
    assert (folder / "template.mp4").stat().st_mtime_ns == stamp
    (folder / "example.json").unlink()  # an interrupted example: rebuilt
    (folder / "junk.txt").write_text("x")
    export_examples(tmp_path, config, seeds=[5])
    assert (folder / "example.json").is_file() and not (folder / "junk.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["00000005"]


def test_export_failure_leaves_no_example(tmp_path, monkeypatch):
    import pvtt_train.data.export as export

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_sequence", boom)
    with pytest.raises(OSError, match="disk full"):
        export_examples(tmp_path, SyntheticConfig(frames=3), seeds=[1])
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_odd_size(tmp_path):
    with pytest.raises(ValueError, match="even"):
        export_examples(tmp_path, SyntheticConfig(height=15, width=16), seeds=[0])


def test_write_video_checks_readback(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    write_video(tmp_path / "ok.mp4", frames, 8)
    with pytest.raises(ExportError):
        write_video(tmp_path / "odd.mp4", np.zeros((4, 15, 17, 3), np.uint8), 8)
