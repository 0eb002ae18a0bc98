"""Media decoded faithfully or refused (issue 12, defects 10-12): deep images by their real range,
damaged PNGs, decompression bombs, a video container that hides its frame count, frame folders of
mixed sizes, and out-of-range numbers given to Save Video.

Every file is made here: 16-bit PNGs and float TIFFs with OpenCV, a raw MJPEG ``.avi`` by
concatenating JPEGs (FFmpeg reports a negative sentinel frame count for it), a PNG bomb with zlib.
"""

from __future__ import annotations

import importlib
import re

import cv2
import numpy as np
import pytest
import torch
from _comfy_pack import PACKAGE, load_pack
from _media_files import feathered_disk, flip_idat_bit, gradient_png, idat_positions, png_bomb, write_raw_mjpeg
from PIL import Image

nodes = load_pack().NODE_CLASS_MAPPINGS
video_io = importlib.import_module(f"{PACKAGE}.pvtt_train.media.video_io")
image_decode = importlib.import_module(f"{PACKAGE}.pvtt_train.media.image_decode")
validation = importlib.import_module(f"{PACKAGE}.pvtt_train.validation")
InputError = importlib.import_module(f"{PACKAGE}.pvtt_train.errors").InputError

ALL = {"frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1}
#: Rounding to the nearest 8-bit level is off by at most half a level (plus float32 noise).
HALF_LEVEL = 0.5 / 255 + 1e-6


def run(node_id: str, **inputs):
    cls = nodes[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


@pytest.fixture
def folders(monkeypatch, tmp_path):
    monkeypatch.setenv("PVTT_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("PVTT_OUTPUT_DIR", str(tmp_path / "output"))
    (tmp_path / "input").mkdir()
    return tmp_path


# --- defect 10: deep images by their real range -------------------------------------------------

def test_16bit_grey_png_loads_by_its_real_range_not_white(folders):
    levels = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    assert cv2.imwrite(str(folders / "input" / "grey16.png"), levels)
    image = run("PVTTLoadImage", image="grey16.png")[0]
    expected = torch.from_numpy(levels / 65535.0).float()
    assert image.shape == (1, 48, 64, 3)
    assert float((image[0] - expected[..., None]).abs().max()) <= HALF_LEVEL  # was 100% white above level 255
    assert float(image.mean()) == pytest.approx(0.5, abs=0.01)


def test_feathered_16bit_mask_sequence_keeps_its_white_area(folders):
    shot = folders / "input" / "mask16"
    shot.mkdir()
    disk = feathered_disk()
    for k in range(3):
        assert cv2.imwrite(str(shot / f"{k:04d}.png"), disk)
    mask = run("PVTTLoadVideo", video="mask16/", **ALL)[1]
    source = torch.from_numpy(disk / 65535.0).float()
    white = int((source > 0.5).sum())
    assert mask.shape == (3, 64, 64)
    assert [int((m > 0.5).sum()) for m in mask] == [white] * 3  # the white area doubled before
    assert float((mask - source).abs().max()) <= HALF_LEVEL


def test_float_tiff_loads_as_0_to_1_not_black(folders):
    values = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    assert cv2.imwrite(str(folders / "input" / "linear.tiff"), values)
    image = run("PVTTLoadImage", image="linear.tiff")[0]
    assert float((image[0] - torch.from_numpy(values)[..., None]).abs().max()) <= HALF_LEVEL  # was all black


@pytest.mark.parametrize("values, problem", [
    (np.linspace(0, 255, 64, dtype=np.float32), r"float image with values 0\.\.255"),
    (np.linspace(-1, 1, 64, dtype=np.float32), r"float image with values -1\.\.1"),
    (np.where(np.arange(64) == 9, np.nan, 0.5).astype(np.float32), r"float image with 1 NaN or Inf pixels"),
])
def test_float_image_outside_0_to_1_is_refused_not_clipped(folders, values, problem):
    assert cv2.imwrite(str(folders / "input" / "odd.tiff"), values.reshape(8, 8))
    with pytest.raises(image_decode.ImageReadError, match=problem) as excinfo:
        run("PVTTLoadImage", image="odd.tiff")
    assert re.search(r"16-bit PNG", str(excinfo.value))


def test_32bit_integer_image_is_refused_as_of_unknown_range(folders):
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000, "I").save(folders / "input" / "int32.tiff")
    with pytest.raises(image_decode.ImageReadError, match=r"int32\.tiff has 32-bit integer pixels.*16-bit PNG"):
        run("PVTTLoadImage", image="int32.tiff")


def test_uint16_and_float_levels_round_to_the_nearest_8_bit_level():
    sixteen = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(image_decode.to_uint8(sixteen), np.round(sixteen.astype(np.float64) * 255 / 65535).astype(np.uint8))
    floats = np.array([-0.05, 0.0, 0.5 / 255 - 1e-4, 0.5, 1.0, 1.05], np.float32)
    assert image_decode.to_uint8(floats).tolist() == [0, 0, 0, 128, 255, 255]


def test_16bit_colour_png_with_alpha_flattens_onto_white(folders):
    rgba = np.zeros((8, 8, 4), np.uint16)
    rgba[..., 2] = 65535  # OpenCV order: red
    rgba[:4, ..., 3] = 65535  # top half opaque, bottom half transparent
    assert cv2.imwrite(str(folders / "input" / "cutout16.png"), rgba)
    image = run("PVTTLoadImage", image="cutout16.png")[0][0]
    assert torch.equal(image[:4], torch.tensor([1.0, 0.0, 0.0]).expand(4, 8, 3))
    assert torch.equal(image[4:], torch.ones(4, 8, 3))


def test_png_with_any_flipped_idat_byte_is_refused_as_damaged(folders):
    # A compressible gradient: zlib meets many flipped bits without an error, and Pillow stops
    # inflating once it has every row, before the stream's own checksum: such a file loaded with
    # wrong pixels and no error.
    png = gradient_png()
    loaded, misworded = [], []
    positions = range(0, len(idat_positions(png)), 5)
    for position in positions:
        (folders / "input" / "product.png").write_bytes(flip_idat_bit(png, position))
        try:
            run("PVTTLoadImage", image="product.png")
        except image_decode.ImageReadError as exc:
            if not re.search(r"product\.png is damaged .*Export it again", str(exc)):
                misworded.append(str(exc))
        else:
            loaded.append(position)
    assert len(positions) > 100
    assert loaded == [] and misworded == []


def test_damaged_frame_of_a_sequence_is_named(folders):
    shot = folders / "input" / "shot"
    shot.mkdir()
    frame = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 1, 3))
    for k in range(3):
        assert cv2.imwrite(str(shot / f"{k:04d}.png"), frame)
    (shot / "0001.png").write_bytes(flip_idat_bit((shot / "0001.png").read_bytes(), 40, 0x10))
    with pytest.raises(image_decode.ImageReadError, match=r"frame 0001\.png of shot/ is damaged .*bad header checksum"):
        run("PVTTLoadVideo", video="shot/", **ALL)


# --- defect 11: memory guarded while decoding ---------------------------------------------------

def budget_for(frames: int, height: int, width: int) -> int:
    """Available memory at which exactly ``frames`` frames of this size fit."""
    return int(validation.clip_bytes(frames, height, width) / validation.MEMORY_FRACTION) + 1


def test_raw_mjpeg_without_a_frame_count_is_stopped_while_decoding(folders, monkeypatch):
    path = write_raw_mjpeg(folders / "input" / "raw.avi")
    cap = cv2.VideoCapture(str(path))
    reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    assert reported < 1  # the container's count is a sentinel, so the guard before decoding cannot run
    monkeypatch.setattr(video_io, "available_memory", lambda: budget_for(5, 64, 80))
    kept = []
    real_cvt = video_io.cv2.cvtColor
    monkeypatch.setattr(video_io.cv2, "cvtColor", lambda *a: kept.append(1) or real_cvt(*a))
    with pytest.raises(InputError) as excinfo:
        run("PVTTLoadVideo", video="raw.avi", **ALL)
    message = str(excinfo.value)
    assert re.search(r"loading 6 frames of raw\.avi at 80x64 \(its container does not say how many frames it "
                     r"holds; counted while decoding\) needs about .* GB", message)
    assert "set frame_load_cap to 5 or less" in message
    assert len(kept) == 5  # stopped at the first frame over the budget, not after decoding the file


def test_raw_mjpeg_loads_when_the_cap_fits(folders, monkeypatch):
    write_raw_mjpeg(folders / "input" / "raw.avi")
    monkeypatch.setattr(video_io, "available_memory", lambda: budget_for(5, 64, 80))
    frames, _, count, _ = run("PVTTLoadVideo", video="raw.avi", **{**ALL, "frame_load_cap": 5})[:4]
    assert count == 5 and frames.shape == (5, 64, 80, 3)
    assert [round(float(f.mean()) * 255 / 20) for f in frames] == [0, 1, 2, 3, 4]


def test_mjpeg_avi_with_a_true_frame_count_is_refused_before_decoding(folders, monkeypatch):
    writer = cv2.VideoWriter(str(folders / "input" / "indexed.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 8, (80, 64))
    for k in range(12):
        writer.write(np.full((64, 80, 3), 20 * k, np.uint8))
    writer.release()
    monkeypatch.setattr(video_io, "available_memory", lambda: budget_for(5, 64, 80))
    monkeypatch.setattr(video_io.cv2, "cvtColor", lambda *a: pytest.fail("decoded before the header check"))
    with pytest.raises(InputError, match=r"loading 12 frames of indexed\.avi at 80x64 needs about"):
        run("PVTTLoadVideo", video="indexed.avi", **ALL)


@pytest.mark.parametrize("reported, file_bytes, count", [
    (-9.223372036854776e18, 10**6, 0),  # FFmpeg's "no duration" sentinel
    (-192153584101141.0, 10**6, 0),
    (float("nan"), 10**6, 0),
    (0.0, 10**6, 0),
    (0.4, 10**6, 0),
    (5000.0, 4000, 0),  # more frames than the file has bytes
    (120.0, 10**6, 120),
])
def test_container_frame_count_is_unknown_unless_it_can_be_true(reported, file_bytes, count):
    assert video_io.container_frame_count(reported, file_bytes) == count


# --- defect 12: mixed sizes, bombs, out-of-range numbers ----------------------------------------

def test_frame_folder_of_mixed_sizes_is_refused_with_both_sizes_and_the_fix(folders):
    shot = folders / "input" / "shot"
    shot.mkdir()
    for name, size in (("0001.png", (16, 12)), ("0002.png", (16, 12)), ("0003.png", (20, 12))):
        Image.new("RGB", size, "red").save(shot / name)
    with pytest.raises(video_io.VideoReadError) as excinfo:
        run("PVTTLoadVideo", video="shot/", **ALL)
    message = str(excinfo.value)
    assert "frame 0003.png of shot/ is 20x12 but the first frame is 16x12 (0001.png)" in message
    assert "never stretches" in message and "resize them all to 16x12" in message


def test_png_bomb_is_refused_as_too_large_with_how_to_downscale(folders):
    (folders / "input" / "bomb.png").write_bytes(png_bomb())
    with pytest.raises(image_decode.ImageReadError) as excinfo:
        run("PVTTLoadImage", image="bomb.png")
    message = str(excinfo.value)
    assert "bomb.png is 20000x20000 pixels, too large to load (it would need about 4.8 GB as an IMAGE" in message
    assert "downscale the image to at most 2048 px on the long side" in message and "magick" in message
    assert "Save it as PNG" not in message


@pytest.mark.parametrize("value, problem", [
    (1e300, r"images has values 0\.\.1e\+300, out of range"),
    (-5.0, r"images has values -5\.\.1, out of range"),
])
def test_save_video_reports_finite_values_out_of_range_not_as_nan(folders, value, problem):
    images = torch.ones(2, 8, 8, 3, dtype=torch.float64) * torch.linspace(0, 1, 8, dtype=torch.float64)[:, None]
    images[1, 3, 3, 0] = value
    with pytest.raises(InputError, match=problem) as excinfo:
        run("PVTTSaveVideo", images=images, filename_prefix="clip", fps=8.0)
    assert "NaN" not in str(excinfo.value) and "rescale it to 0..1" in str(excinfo.value)
    assert not (folders / "output").exists() or not any((folders / "output").rglob("*.mp4"))


def test_save_video_still_names_nan_as_nan(folders):
    images = torch.full((1, 8, 8, 3), 0.5, dtype=torch.float64)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"images contains 1 NaN or Inf values \(frames 0\)"):
        run("PVTTSaveVideo", images=images, filename_prefix="clip", fps=8.0)
