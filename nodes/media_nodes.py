"""Video and product-photo input, and MP4 output, for designers' files.

Loaders list ComfyUI's input folder plus the pack's ``samples/`` so the example workflow runs out
of the box; the video loader also lists folders of numbered frames in the input folder as
``<folder>/``. Clips are ComfyUI IMAGE batches [F,H,W,3] in 0..1; the video loader also returns the
frames' luminance as a MASK, so a black-and-white mask video plugs straight into a MASK input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from . import paths
from .core_video import make_video
from .filename_tokens import expand_tokens
from .runtime import check_interrupted, progress_bar

log = logging.getLogger("[PVTT]")

SEQUENCE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
PREVIEW_FORMATS = ["webp", "gif"]


def _file_stamp(name: str) -> str:
    """Cheap change detector for IS_CHANGED: size and mtime of the resolved file."""
    try:
        st = paths.resolve_media(name).stat()
    except FileNotFoundError:
        return ""
    return f"{st.st_size}-{st.st_mtime_ns}"


def is_sequence(name: str) -> bool:
    """Dropdown names of image-sequence folders end with '/', which no file name can."""
    return name.endswith("/")


def _natural_key(name: str) -> list:
    """Sort key that puts frame_2 before frame_10: digit runs compare as numbers."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"([0-9]+)", name))]


def _frame_files(folder: Path) -> Iterator[Path]:
    """The frame images directly in ``folder`` (resolved). Hidden files (macOS ``._0001.png``) and
    symlinks that lead out of the folder are left out, as resolve_media does for single files."""
    root = folder.resolve()
    for path in root.iterdir():
        if (path.suffix.lower() in SEQUENCE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
                and path.resolve().parent == root):
            yield path


def sequence_names() -> list[str]:
    """``<folder>/`` for each folder directly in the input folder that holds frame images."""
    root = paths.input_dir().resolve()
    if not root.is_dir():
        return []
    folders = [d for d in root.iterdir() if not d.name.startswith(".") and d.is_dir() and d.resolve().parent == root]
    return sorted((f"{d.name}/" for d in folders if next(_frame_files(d), None)), key=_natural_key)


def resolve_sequence(name: str) -> list[Path]:
    """The frames, in natural order, of a ``<folder>/`` name; only folders directly in the input
    folder resolve, so a crafted name cannot read images elsewhere."""
    root = paths.input_dir().resolve()
    folder = (root / name).resolve()
    frames = list(_frame_files(folder)) if folder.parent == root and folder.is_dir() else []
    if not frames:
        raise FileNotFoundError(
            f"PVTT: image sequence {name!r} not found. Put a folder of numbered PNG, JPEG or WebP frames in "
            f"ComfyUI's input folder ({paths.input_dir()}) and pick it from the list as '<folder>/'.")
    return sorted(frames, key=lambda p: _natural_key(p.name))


def _sequence_stamp(name: str) -> str:
    """Cheap change detector for IS_CHANGED: names, sizes and mtimes of the frames."""
    try:
        frames = resolve_sequence(name)
    except FileNotFoundError:
        return ""
    digest = hashlib.sha1()
    for path in frames:
        st = path.stat()
        digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()


def _validate_sequence(name: str) -> bool | str:
    try:
        resolve_sequence(name)
    except FileNotFoundError as exc:
        return str(exc)
    return True


def _validate_media(name: str, extensions: set[str]) -> bool | str:
    try:
        path = paths.resolve_media(name)
    except FileNotFoundError as exc:
        return str(exc)
    if path.suffix.lower() not in extensions:
        return f"PVTT: {name!r} is not one of the supported file types ({', '.join(sorted(extensions))})"
    return True


class PVTTLoadVideo:
    DESCRIPTION = ("Loads a video (MP4, WebM, GIF or any file OpenCV reads) or a folder of numbered frames from "
                   "ComfyUI's input folder, or one of the pack's samples. Outputs the frames as IMAGE and their "
                   "brightness as MASK: load the template video for IMAGE, "
                   "and a black-and-white mask video (white = the product to replace) for MASK.")
    CATEGORY = "PVTT/video"
    FUNCTION = "load"
    # outputs are appended only: saved links refer to them by index
    RETURN_TYPES = ("IMAGE", "MASK", "INT", "FLOAT", "VIDEO", "AUDIO")
    RETURN_NAMES = ("frames", "mask", "frame_count", "fps", "video", "audio")
    OUTPUT_TOOLTIPS = (
        "The loaded frames, [frames, height, width, 3] in 0..1.",
        "The frames' luminance, [frames, height, width] in 0..1 (white = 1): use with a mask video.",
        "Number of frames loaded.",
        "Frame rate of the loaded frames (the file's rate or sequence_fps, divided by select_every_nth).",
        "The loaded frames and their sound as a core ComfyUI VIDEO (for core Save Video, Get Video Components "
        "or PVTT Template Transfer's template_core_video).",
        "The sound of the loaded span (skipped frames' sound is cut too) as core AUDIO; nothing (None) when the "
        "file has no sound. Connect it to PVTT Save Video's audio to keep the template's sound.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (paths.media_names(paths.VIDEO_EXTENSIONS) + sequence_names(), {
                "video_upload": True,
                "tooltip": "A video in ComfyUI's input folder (or upload one with the button), a folder of numbered "
                           "frames there (listed as '<folder>/'), or a shipped example under samples/."}),
            "frame_load_cap": ("INT", {
                "default": 0, "min": 0, "max": 10000, "step": 1,
                "tooltip": "Load at most this many frames (after skipping and sub-sampling); 0 loads all."}),
            "skip_first_frames": ("INT", {
                "default": 0, "min": 0, "max": 100000, "step": 1,
                "tooltip": "Frames to drop from the start of the video before loading."}),
            "select_every_nth": ("INT", {
                "default": 1, "min": 1, "max": 1000, "step": 1,
                "tooltip": "Keep every n-th frame (1 keeps all): lowers the frame rate and the memory used."}),
        }, "optional": {
            "sequence_fps": ("FLOAT", {
                "default": 8.0, "min": 0.1, "max": 120.0, "step": 0.1,
                "tooltip": "Frame rate of a folder of frames (which stores none); ignored for video files."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, video):
        if is_sequence(video):
            return _validate_sequence(video)
        return _validate_media(video, paths.VIDEO_EXTENSIONS)

    @classmethod
    def IS_CHANGED(cls, video, **_):
        return _sequence_stamp(video) if is_sequence(video) else _file_stamp(video)

    def load(self, video, frame_load_cap, skip_first_frames, select_every_nth, sequence_fps=8.0):
        import torch

        from ..pvtt_train.media.video_io import read_sequence, read_video

        bar = progress_bar(frame_load_cap or 1)

        def on_frame(kept, expected):
            check_interrupted()
            if expected or frame_load_cap:
                bar.update_absolute(kept, expected or frame_load_cap)

        selection = {"frame_load_cap": frame_load_cap, "skip_first_frames": skip_first_frames,
                     "select_every_nth": select_every_nth, "on_frame": on_frame}
        audio = None
        if is_sequence(video):
            frames, fps = read_sequence(resolve_sequence(video), fps=sequence_fps, **selection)
        else:
            path = paths.resolve_media(video)
            frames, fps = read_video(path, **selection)
            audio = _loaded_sound(path, len(frames), fps, skip_first_frames, select_every_nth)
        image = torch.from_numpy(frames).float().div_(255.0)
        luminance = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
        log.info("loaded %d frames of %s (%dx%d, %.2f fps%s)", len(frames), video, frames.shape[2], frames.shape[1],
                 fps, ", with sound" if audio is not None else "")
        return (image, luminance.clamp_(0, 1), len(frames), fps, make_video(image, fps, audio), audio)


def _loaded_sound(path, count: int, fps: float, skip_first_frames: int, select_every_nth: int):
    """The file's sound over the time the loaded frames span: from the first kept frame to the end of the last
    (``fps`` is already divided by select_every_nth, so each kept frame lasts 1/fps seconds of the file)."""
    from ..pvtt_train.media.av_io import read_audio

    file_fps = fps * select_every_nth
    start = skip_first_frames / file_fps
    return read_audio(path, start, start + count / fps)


class PVTTLoadImage:
    DESCRIPTION = ("Loads the new product's photo from ComfyUI's input folder or the pack's samples. Best: the "
                   "product alone on a plain light background, or a cut-out PNG (transparency becomes white). "
                   "16-bit PNG/TIFF and 0..1 float TIFF load by their real range, rounded to 8 bits; damaged PNGs "
                   "and images too large for memory are refused.")
    CATEGORY = "PVTT/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The photo as a one-image batch [1, height, width, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": (paths.media_names(paths.IMAGE_EXTENSIONS), {
                "image_upload": True,
                "tooltip": "A product photo in ComfyUI's input folder (or upload one with the button), or a "
                           "shipped example under samples/."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return _validate_media(image, paths.IMAGE_EXTENSIONS)

    @classmethod
    def IS_CHANGED(cls, image):
        return _file_stamp(image)

    def load(self, image):
        import torch

        from ..pvtt_train.media.image_decode import read_image

        pixels = read_image(paths.resolve_media(image))
        return (torch.from_numpy(pixels).float().div_(255.0)[None],)


class PVTTSaveVideo:
    DESCRIPTION = ("Saves frames as an H.264 MP4 (plays in browsers and editors) in ComfyUI's output folder, with "
                   "the template's sound when audio is connected and the workflow inside (drop the MP4 on ComfyUI to "
                   "reload it), and shows an animated preview (also saved: an animated WebP that holds the workflow, "
                   "or a GIF). Frames are rounded to 8 bits; the MP4 and WebP are lossy (the MP4 stores colour at "
                   "half resolution) and the GIF has 256 colours, so none of them holds the exact frames.")
    CATEGORY = "PVTT/video"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames to save, e.g. the output of PVTT Background Preserve."}),
                "filename_prefix": ("STRING", {
                    "default": "PVTT/pvtt",
                    "tooltip": "File name start, relative to the output folder; a '/' makes a subfolder. "
                               "A counter is appended so nothing is overwritten. Tokens as in core ComfyUI: "
                               "%date:yyyy-MM-dd%, %year%, %month%, %day%, %hour%, %minute%, %second%, %width%, "
                               "%height%."}),
                "fps": ("FLOAT", {
                    "default": 8.0, "min": 0.1, "max": 120.0, "step": 0.1,
                    "tooltip": "Frames per second of the saved video (use the Load Video fps to keep the "
                               "template's speed)."}),
            },
            "optional": {
                "preview_format": (PREVIEW_FORMATS, {
                    "default": "webp",
                    "tooltip": "Animated preview saved next to the MP4: webp keeps full colour and holds the "
                               "workflow; gif (256 colours, no workflow) opens in tools without WebP support."}),
                "audio": ("AUDIO", {
                    "tooltip": "Sound to put in the MP4 (AAC), e.g. PVTT Load Video's audio: the template's sound. "
                               "Cut to the clip's length; a clip longer than the sound is silent at the end."}),
                "frames_per_clip": ("INT", {
                    "default": 0, "min": 0, "max": 100000, "forceInput": True,
                    "tooltip": "Connect PVTT Template Transfer's frames_per_clip to save a batch of products as a "
                               "numbered set: one MP4 (and preview) per clip, prefix_00001, prefix_00002, ... "
                               "Unconnected (or 0): all frames go into one file."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, images, filename_prefix, fps, preview_format="webp", audio=None, frames_per_clip=None, prompt=None,
             extra_pnginfo=None):
        from ..pvtt_train.validation import image_batch
        from .clip_sets import clips_of

        images = image_batch(images, "images")
        clips = clips_of(images, frames_per_clip)  # checked before any file is written
        prefix = expand_tokens(filename_prefix, images.shape[2], images.shape[1])
        saved = [save_clip(clip, prefix, fps, preview_format, audio, prompt, extra_pnginfo) for clip in clips]
        return {"ui": {"images": [preview for preview, _ in saved], "animated": (True,) * len(saved),
                       "pvtt_mp4": [mp4 for _, mp4 in saved]}}


def save_clip(images, filename_prefix, fps, preview_format="webp", audio=None, prompt=None, extra_pnginfo=None):
    """One clip [F,H,W,3] in 0..1 saved as ``<prefix>_NNNNN.mp4`` (with ``audio``, cut to the clip) and its
    animated preview; returns the UI entries of the preview and of the MP4. PVTT Save Video calls it once
    per clip of a batch, so the clips become a numbered set."""
    from ..pvtt_train.media.av_io import write_mp4
    from ..pvtt_train.media.video_io import write_gif, write_webp

    folder, stem, subfolder = next_output_name(filename_prefix)
    frames = (images * 255).round().to("cpu").byte().numpy()
    write_mp4(folder / f"{stem}.mp4", frames, fps, audio, workflow_metadata(prompt, extra_pnginfo),
              on_frame=lambda *_: check_interrupted())
    if preview_format == "gif":  # the file name never takes the widget's text, so it stays in folder
        preview = f"{stem}.gif"
        write_gif(folder / preview, frames, fps)
    else:
        preview = f"{stem}.webp"
        write_webp(folder / preview, frames, fps, workflow_exif(prompt, extra_pnginfo))
    log.info("saved %d frames to %s.mp4", len(frames), folder / stem)
    return ({"filename": preview, "subfolder": subfolder, "type": "output"},
            {"filename": f"{stem}.mp4", "subfolder": subfolder, "type": "output"})


def next_output_name(filename_prefix: str):
    """(folder, stem, subfolder) for the next free ``<prefix>_NNNNN`` in the output folder.

    The prefix may name subfolders but never leave the output folder.
    """
    from ..pvtt_train.errors import InputError

    if not filename_prefix.strip(" /") or "\x00" in filename_prefix:
        raise InputError(f"PVTT: filename_prefix {filename_prefix!r} is not a usable file name; use a plain name such "
                         f"as 'PVTT/my_clip'.")
    root = paths.output_dir().resolve()
    target = (root / filename_prefix).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InputError(f"PVTT: filename_prefix {filename_prefix!r} points outside the output folder {root}; "
                         f"use a plain name such as 'PVTT/my_clip'.")
    folder, base = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    taken = [p.stem[len(base) + 1:] for p in folder.glob(f"{base}_*.mp4")]
    counter = max((int(t) for t in taken if t.isdigit()), default=0) + 1
    subfolder = "" if folder == root else folder.relative_to(root).as_posix()
    return folder, f"{base}_{counter:05d}", subfolder


def _metadata_disabled() -> bool:
    try:
        from comfy.cli_args import args
    except ImportError:
        return False
    return bool(args.disable_metadata)


def workflow_metadata(prompt, extra_pnginfo) -> dict:
    """The MP4's container metadata as core ComfyUI's SaveVideo writes it: each extra_pnginfo item (the
    ``workflow``) and the ``prompt``, JSON-encoded by the writer; empty with --disable-metadata."""
    if _metadata_disabled():
        return {}
    metadata = dict(extra_pnginfo or {})
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata


def workflow_exif(prompt, extra_pnginfo):
    """EXIF carrying the prompt and workflow, as ComfyUI's own WebP saver writes them.

    Skipped when ComfyUI runs with --disable-metadata or outside ComfyUI.
    """
    from PIL import Image

    exif = Image.Exif()
    try:
        from comfy.cli_args import args
    except ImportError:
        return exif
    if args.disable_metadata:
        return exif
    if prompt is not None:
        exif[0x0110] = "prompt:" + json.dumps(prompt)
    tag = 0x010F
    for key, value in (extra_pnginfo or {}).items():
        exif[tag] = f"{key}:{json.dumps(value)}"
        tag -= 1
    return exif
