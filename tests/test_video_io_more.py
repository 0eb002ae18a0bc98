"""Video I/O beyond one MP4: folders of numbered frames, WebM and GIF input, the memory guard that
refuses a clip before decoding it, progress and Cancel while loading, and the GIF preview.

Sources are tiny (16x16, a few frames) and frame k is a flat grey of brightness 20*k, so a loaded
frame tells which source frame it was even after lossy compression.
"""

from __future__ import annotations

import importlib
import math
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from _comfy_pack import PACKAGE, load_pack
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

nodes = load_pack().NODE_CLASS_MAPPINGS
media_nodes = importlib.import_module(f"{PACKAGE}.nodes.media_nodes")
video_io = importlib.import_module(f"{PACKAGE}.pvtt_train.media.video_io")
InputError = importlib.import_module(f"{PACKAGE}.pvtt_train.errors").InputError

TEMPLATE = "samples/pvtt_template.mp4"  # 9 frames of 128x128 at 8 fps
TEMPLATE_FRAME_BYTES = 128 * 128 * 3 * 4
ALL = {"frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1}


def run(node_id: str, **inputs):
    """Execute a node as ComfyUI does: a fresh instance, its FUNCTION called with keyword inputs."""
    cls = nodes[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def grey(k: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), 20 * k, np.uint8)


def write_frames(folder, names, size: int = 16):
    """Frame files named ``names``; the k-th name gets brightness 20*k."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(grey(k, size)).save(folder / name)
    return folder


def frame_indices(frames: torch.Tensor) -> list[int]:
    """Which source frame each loaded frame is (brightness / 20)."""
    return [round(float(f.mean()) * 255 / 20) for f in frames]


@pytest.fixture
def folders(monkeypatch, tmp_path):
    """Standalone input and output folders."""
    monkeypatch.setenv("PVTT_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("PVTT_OUTPUT_DIR", str(tmp_path / "output"))
    (tmp_path / "input").mkdir()
    return tmp_path


@pytest.fixture
def memory(monkeypatch):
    """Set the memory the guard sees, in bytes (None: unknown)."""
    return lambda available: monkeypatch.setattr(video_io, "available_memory", lambda: available)


# --- schema: new inputs come last and default to today's behaviour ------------------------------

def test_load_video_appends_sequence_fps_after_the_existing_widgets(folders):
    schema = nodes["PVTTLoadVideo"].INPUT_TYPES()
    assert list(schema["required"]) == ["video", "frame_load_cap", "skip_first_frames", "select_every_nth"]
    assert list(schema["optional"]) == ["sequence_fps"]
    assert schema["optional"]["sequence_fps"][1]["default"] == 8.0


def test_save_video_appends_preview_format_defaulting_to_webp():
    schema = nodes["PVTTSaveVideo"].INPUT_TYPES()
    assert list(schema["required"]) == ["images", "filename_prefix", "fps"]
    assert schema["optional"]["preview_format"][0] == ["webp", "gif"]
    assert schema["optional"]["preview_format"][1]["default"] == "webp"


# --- image sequences ----------------------------------------------------------------------------

def test_video_list_shows_frame_folders_after_the_files(folders):
    inp = folders / "input"
    (inp / "clip.mp4").write_bytes(b"")
    write_frames(inp / "shot", ["0001.png"])
    write_frames(inp / ".cache", ["0001.png"])
    (inp / "notes").mkdir()
    (inp / "notes" / "0001.txt").write_text("")
    names = nodes["PVTTLoadVideo"].INPUT_TYPES()["required"]["video"][0]
    assert names[0] == "clip.mp4" and names[-1] == "shot/"
    assert "notes/" not in names and ".cache/" not in names


def test_sequence_loads_frames_in_natural_order_at_sequence_fps(folders):
    write_frames(folders / "input" / "shot", ["frame_1.png", "frame_2.png", "frame_10.png"])  # sorted as text: 1, 10, 2
    frames, mask, count, fps = run("PVTTLoadVideo", video="shot/", **ALL, sequence_fps=12.0)[:4]
    assert frames.shape == (3, 16, 16, 3) and mask.shape == (3, 16, 16)
    assert count == 3 and fps == pytest.approx(12.0)
    assert frame_indices(frames) == [0, 1, 2]


def test_sequence_fps_defaults_to_8(folders):
    write_frames(folders / "input" / "shot", ["0001.png", "0002.png"])
    assert run("PVTTLoadVideo", video="shot/", **ALL)[3] == pytest.approx(8.0)


def test_sequence_applies_cap_skip_and_stride_like_a_video(folders):
    write_frames(folders / "input" / "shot", [f"{k:04d}.png" for k in range(10)])
    frames, _, count, fps = run("PVTTLoadVideo", video="shot/", frame_load_cap=2, skip_first_frames=1,
                                select_every_nth=3, sequence_fps=12.0)[:4]
    assert count == 2 and frame_indices(frames) == [1, 4] and fps == pytest.approx(4.0)


def test_sequence_uses_only_visible_png_jpeg_and_webp_files(folders):
    shot = write_frames(folders / "input" / "shot", ["0001.png", "0002.jpg", "0003.webp", "._0004.png", "0005.gif"])
    (shot / "0006.txt").write_text("")
    assert run("PVTTLoadVideo", video="shot/", **ALL)[2] == 3


def test_sequence_leaves_out_frames_linked_from_outside_the_folder(folders):
    outside = write_frames(folders / "outside", ["0001.png"])
    shot = write_frames(folders / "input" / "shot", ["0001.png"])
    (shot / "0002.png").symlink_to(outside / "0001.png")
    assert run("PVTTLoadVideo", video="shot/", **ALL)[2] == 1


@pytest.mark.parametrize("name", ["../outside/", "{outside}/", "shot/sub/", "./", "../input/", "link/", "missing/"])
def test_sequence_names_resolve_only_to_folders_directly_in_the_input_folder(folders, name):
    outside = write_frames(folders / "outside", ["0001.png"])
    write_frames(folders / "input" / "shot" / "sub", ["0001.png"])
    (folders / "input" / "link").symlink_to(outside, target_is_directory=True)
    name = name.format(outside=outside)
    assert "input folder" in nodes["PVTTLoadVideo"].VALIDATE_INPUTS(name)
    with pytest.raises(FileNotFoundError, match="input folder"):
        run("PVTTLoadVideo", video=name, **ALL)


def test_sequence_frames_of_another_size_name_the_file(folders):
    shot = write_frames(folders / "input" / "shot", ["0001.png"])
    Image.fromarray(grey(1, size=8)).save(shot / "0002.png")
    with pytest.raises(video_io.VideoReadError, match="0002.png of shot/ is 8x8 but the first frame is 16x16"):
        run("PVTTLoadVideo", video="shot/", **ALL)


def test_sequence_is_changed_only_when_its_frames_change(folders):
    shot = write_frames(folders / "input" / "shot", ["0001.png"])
    stamp = nodes["PVTTLoadVideo"].IS_CHANGED(video="shot/")
    assert nodes["PVTTLoadVideo"].IS_CHANGED(video="shot/") == stamp
    Image.fromarray(grey(1)).save(shot / "0002.png")
    assert nodes["PVTTLoadVideo"].IS_CHANGED(video="shot/") != stamp


# --- other containers ---------------------------------------------------------------------------

def test_gif_loads_every_frame_at_its_frame_rate(folders):
    images = [Image.fromarray(grey(k)) for k in range(5)]
    images[0].save(folders / "input" / "anim.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    frames, _, count, fps = run("PVTTLoadVideo", video="anim.gif", **ALL)[:4]
    assert count == 5 and fps == pytest.approx(10.0) and frame_indices(frames) == [0, 1, 2, 3, 4]


def test_webm_loads_every_frame_at_its_frame_rate(folders):
    path = folders / "input" / "clip.webm"
    for code in ("VP90", "VP80"):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), 8.0, (16, 16))
        if writer.isOpened():
            break
    else:
        pytest.skip("this OpenCV build cannot write WebM (no VP8/VP9 encoder)")
    for k in range(5):
        writer.write(grey(k))
    writer.release()
    frames, _, count, fps = run("PVTTLoadVideo", video="clip.webm", **ALL)[:4]
    assert count == 5 and fps == pytest.approx(8.0) and frame_indices(frames) == [0, 1, 2, 3, 4]


# --- the selection rule, for any numbers --------------------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """``source(kind, total)``: an MP4 path or a frame-file list of ``total`` frames, written once."""
    root, made = tmp_path_factory.mktemp("sources"), {}

    def source(kind: str, total: int):
        if (kind, total) not in made:
            if kind == "mp4":
                made[kind, total] = root / f"{total}.mp4"
                video_io.write_mp4(made[kind, total], np.stack([grey(k) for k in range(total)]), 8.0)
            else:
                folder = write_frames(root / f"seq{total}", [f"{k}.png" for k in range(total)])
                made[kind, total] = [folder / f"{k}.png" for k in range(total)]
        return made[kind, total]

    return source


@pytest.mark.parametrize("kind", ["mp4", "sequence"])
@settings(max_examples=40, deadline=None, database=None)
@given(total=st.integers(1, 12), cap=st.integers(0, 14), skip=st.integers(0, 14), nth=st.integers(1, 5))
def test_loaded_frames_follow_the_cap_skip_stride_formula(sources, kind, total, cap, skip, nth):
    expected = max(0, math.ceil((total - skip) / nth))
    expected = min(cap, expected) if cap else expected
    read = video_io.read_video if kind == "mp4" else video_io.read_sequence
    if expected == 0:
        with pytest.raises(video_io.VideoReadError, match="Lower skip_first_frames"):
            read(sources(kind, total), cap, skip, nth)
        return
    frames, _ = read(sources(kind, total), cap, skip, nth)
    indices = frame_indices(torch.from_numpy(frames).float() / 255)
    assert len(frames) == expected and indices[0] == skip and indices[-1] == skip + (expected - 1) * nth


# --- memory guard -------------------------------------------------------------------------------

def test_memory_guard_names_the_estimate_the_free_memory_and_the_cap_that_fits(memory):
    memory(16e9)  # half is 8 GB; a 1080p frame is 1920*1080*12 = 24,883,200 bytes, so 321 fit
    with pytest.raises(InputError) as err:
        video_io.check_memory("big.mp4", 1000, 1080, 1920)
    message = str(err.value)
    assert "1000 frames of big.mp4 at 1920x1080 needs about 24.9 GB" in message
    assert "only 16.0 GB of memory is available" in message and "at most 50% of it" in message
    assert "set frame_load_cap to 321 or less, raise select_every_nth, or downscale the video" in message


def test_memory_guard_asks_to_downscale_when_one_frame_does_not_fit(memory):
    memory(10_000_000)
    with pytest.raises(InputError, match=r"downscale the video \(not even one frame fits\)") as err:
        video_io.check_memory("huge.mp4", 1, 2160, 3840)
    assert "frame_load_cap" not in str(err.value)


def test_memory_guard_is_skipped_when_free_memory_is_unknown(memory):
    memory(None)
    assert video_io.check_memory("huge.mp4", 10**6, 2160, 3840) is None


def test_load_video_refuses_a_clip_over_half_the_free_memory_before_decoding(folders, memory, monkeypatch):
    memory(2_000_000)  # half is 1,000,000 bytes: 5 frames of 196,608 fit, the template's 9 do not
    decoded = []
    monkeypatch.setattr(media_nodes, "check_interrupted", lambda: decoded.append(1))
    with pytest.raises(InputError, match="9 frames of pvtt_template.mp4 at 128x128.*frame_load_cap to 5 or less"):
        run("PVTTLoadVideo", video=TEMPLATE, **ALL)
    assert decoded == []


def test_load_video_with_the_suggested_cap_fits(folders, memory):
    memory(2_000_000)
    assert run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=5, skip_first_frames=0, select_every_nth=1)[2] == 5


def test_memory_guard_counts_the_files_of_a_sequence(folders, memory):
    write_frames(folders / "input" / "shot", [f"{k:04d}.png" for k in range(4)])
    memory(20_000)  # half is 10,000 bytes; a 16x16 frame is 3,072: 3 fit
    with pytest.raises(InputError, match="4 frames of shot/ at 16x16.*frame_load_cap to 3 or less"):
        run("PVTTLoadVideo", video="shot/", **ALL)


def test_available_memory_reads_memavailable(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8192 kB\nMemFree:         512 kB\nMemAvailable:   2048 kB\n")
    monkeypatch.setattr(sys.modules[video_io.available_memory.__module__], "MEMINFO", meminfo)
    assert video_io.available_memory() == 2048 * 1024


def test_available_memory_falls_back_to_psutil(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[video_io.available_memory.__module__], "MEMINFO", tmp_path / "missing")
    fake = SimpleNamespace(virtual_memory=lambda: SimpleNamespace(available=123_456))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert video_io.available_memory() == 123_456


def test_available_memory_is_unknown_without_meminfo_or_psutil(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[video_io.available_memory.__module__], "MEMINFO", tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert video_io.available_memory() is None


# --- progress and Cancel ------------------------------------------------------------------------

def test_load_video_reports_progress_towards_the_frames_it_will_keep(folders, monkeypatch):
    updates = []
    bar = SimpleNamespace(update_absolute=lambda value, total=None, preview=None: updates.append((value, total)))
    monkeypatch.setattr(media_nodes, "progress_bar", lambda total: bar)
    run("PVTTLoadVideo", video=TEMPLATE, **ALL)
    assert updates == [(k, 9) for k in range(1, 10)]


def test_reader_reports_while_skipping_so_cancel_answers(tmp_path):
    path = tmp_path / "long.mp4"
    video_io.write_mp4(path, np.stack([grey(k % 12) for k in range(40)]), 8.0)
    calls = []
    video_io.read_video(path, skip_first_frames=39, on_frame=lambda kept, expected: calls.append((kept, expected)))
    assert calls == [(0, 1)] * (39 // video_io.PROGRESS_EVERY) + [(1, 1)]


@pytest.mark.parametrize("video", [TEMPLATE, "shot/"])
def test_load_video_stops_when_cancelled(folders, monkeypatch, video):
    write_frames(folders / "input" / "shot", ["0001.png", "0002.png"])

    def cancel():
        raise KeyboardInterrupt("cancelled")

    monkeypatch.setattr(media_nodes, "check_interrupted", cancel)
    with pytest.raises(KeyboardInterrupt):
        run("PVTTLoadVideo", video=video, **ALL)


# --- PVTT Save Video: GIF preview ---------------------------------------------------------------

def clip(frames: int = 6) -> torch.Tensor:
    """A 16x16 IMAGE batch whose frames all differ (a GIF merges identical neighbours)."""
    return torch.from_numpy(np.stack([grey(k) for k in range(frames)])).float() / 255


def test_save_video_writes_an_animated_gif_preview_when_asked(folders):
    result = run("PVTTSaveVideo", images=clip(6), filename_prefix="PVTT/clip", fps=10.0, preview_format="gif")
    assert result["ui"]["images"] == [{"filename": "clip_00001.gif", "subfolder": "PVTT", "type": "output"}]
    saved = folders / "output" / "PVTT"
    with Image.open(saved / "clip_00001.gif") as gif:
        assert gif.is_animated and gif.n_frames == 6 and gif.info["duration"] == 100
    assert sorted(p.name for p in saved.iterdir()) == ["clip_00001.gif", "clip_00001.mp4"]


def test_save_video_gif_preview_refuses_a_prefix_outside_the_output_folder(folders):
    with pytest.raises(ValueError, match="outside the output folder"):
        run("PVTTSaveVideo", images=clip(2), filename_prefix="../escape", fps=8.0, preview_format="gif")
    assert not list(folders.glob("escape*"))
