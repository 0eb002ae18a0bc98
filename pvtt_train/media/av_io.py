"""MP4 through PyAV (FFmpeg): H.264 yuv420p video that browsers play, AAC sound, and ComfyUI's
workflow in the container metadata; plus reading a file's sound as ComfyUI's AUDIO.

PyAV (``av``) is one of ComfyUI's own requirements, and its wheels bundle FFmpeg with the libx264
encoder. The encoder is chosen from ``H264_ENCODERS`` in order (libx264, then Cisco's libopenh264,
then whatever FFmpeg calls ``h264``); an FFmpeg build with none of them is refused with a message
that says how to get one, never silently written as a codec browsers cannot play.

Files are written through ``models.checkpoint.write_atomic`` (a private temporary folder beside the
target, fsync, rename), so a crash, a full disk or Cancel never leaves a truncated MP4 under the final
name. Metadata is written the way core ComfyUI's SaveVideo writes it (``movflags=
use_metadata_tags``, each value JSON-encoded), so the frontend restores the workflow from the MP4.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError, shown_as_pvtt
from ..models.checkpoint import write_atomic

log = logging.getLogger("[PVTT]")

#: H.264 encoders in order of preference.
H264_ENCODERS = ("libx264", "libopenh264", "h264")
#: libx264's constant rate factor: 18 is visually near-lossless at a moderate size.
X264_CRF = "18"
AUDIO_CODEC = "aac"


@shown_as_pvtt
class VideoWriteError(InputError):
    """A clip or sound that cannot be written as MP4."""


def h264_encoder() -> str:
    """The first H.264 encoder this PyAV/FFmpeg build has; a clear error when it has none."""
    import av

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - UnknownCodecError, or a decoder-only name
            continue
        return name
    raise VideoWriteError(
        f"PVTT: this PyAV build (av {av.__version__}) has no H.264 encoder (tried {', '.join(H264_ENCODERS)}), so "
        f"it cannot write an MP4 that browsers play. Install PyAV's wheel from PyPI (`pip install --force-reinstall "
        f"av`), which bundles FFmpeg with libx264.")


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs an even width and height: an odd last row/column is repeated once, so every pixel of the
    clip is in the file (cropping would lose it)."""
    height, width = frames.shape[1:3]
    pad_rows, pad_cols = height % 2, width % 2
    if pad_rows or pad_cols:
        log.warning("MP4 needs an even width and height: %dx%d is saved as %dx%d with the last column/row repeated",
                    width, height, width + pad_cols, height + pad_rows)
        frames = np.pad(frames, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
    return frames


def audio_samples(audio: Mapping | None, seconds: float) -> tuple[np.ndarray, int] | None:
    """ComfyUI AUDIO ``{"waveform": [B, C, T], "sample_rate": int}`` as float32 [C, T] (first item of the
    batch, at most 2 channels: more are mixed down to stereo) cut to ``seconds``; None when there is none."""
    if audio is None:
        return None
    try:
        waveform, rate = audio["waveform"], int(audio["sample_rate"])
    except (TypeError, KeyError, ValueError) as exc:
        raise VideoWriteError(f"PVTT: audio must be ComfyUI AUDIO, a dict with 'waveform' [batch, channels, "
                              f"samples] and 'sample_rate'; got {type(audio).__name__}") from exc
    samples = np.asarray(waveform.detach().float().cpu().numpy() if hasattr(waveform, "detach") else waveform,
                         dtype=np.float32)
    if samples.ndim != 3 or samples.shape[1] < 1 or rate <= 0:
        raise VideoWriteError(f"PVTT: audio waveform must be [batch, channels, samples] with a positive sample "
                              f"rate; got shape {samples.shape} at {rate} Hz")
    samples = samples[0]
    if samples.shape[0] > 2:
        samples = np.stack([samples[0::2].mean(0), samples[1::2].mean(0)])
    samples = samples[:, :math.ceil(seconds * rate)]
    if samples.shape[1] == 0:
        return None
    return np.ascontiguousarray(np.nan_to_num(samples).clip(-1, 1)), rate


def write_mp4(path: Path, frames: np.ndarray, fps: float, audio: Mapping | None = None,
              metadata: Mapping | None = None, on_frame: Callable[[int, int], None] | None = None) -> Path:
    """Write [F, H, W, 3] uint8 RGB frames as an H.264 yuv420p MP4 at ``fps``, with ``audio`` (ComfyUI AUDIO,
    cut to the clip's length) as AAC and each ``metadata`` item JSON-encoded in the container. Atomic: the
    file appears under ``path`` only when complete. ``on_frame(done, total)`` may raise to stop (Cancel)."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise VideoWriteError(f"PVTT: write_mp4 takes uint8 frames [frames, height, width, 3]; got "
                              f"{frames.dtype} {frames.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise VideoWriteError(f"PVTT: fps must be a positive number; got {fps}")
    encoder = h264_encoder()
    frames = _even(frames)
    sound = audio_samples(audio, len(frames) / fps)
    rate = Fraction(round(fps * 1000), 1000)

    def encode(temp: str) -> None:
        with av.open(str(temp), mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as container:
            for key, value in (metadata or {}).items():
                container.metadata[key] = value if isinstance(value, str) else json.dumps(value)
            video = container.add_stream(encoder, rate=rate)
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            if encoder == "libx264":
                video.options = {"crf": X264_CRF}
            sound_stream = None
            if sound is not None:
                sound_stream = container.add_stream(AUDIO_CODEC, rate=sound[1])
                sound_stream.layout = "mono" if sound[0].shape[0] == 1 else "stereo"
            for i, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
                container.mux(video.encode(frame))
                if on_frame is not None:
                    on_frame(i + 1, len(frames))
            container.mux(video.encode(None))
            if sound_stream is not None:
                samples, sample_rate = sound
                # packed float: [1, T*C] interleaved, as core ComfyUI hands its waveform to the AAC encoder
                chunk = av.AudioFrame.from_ndarray(samples.T.reshape(1, -1).copy(), format="flt",
                                                   layout=sound_stream.layout.name)
                chunk.sample_rate = sample_rate
                chunk.pts = 0
                container.mux(sound_stream.encode(chunk))
                container.mux(sound_stream.encode(None))

    write_atomic(path, encode)  # a private temp folder, fsync, rename; a failure or Cancel leaves nothing
    return path


def read_audio(path: Path, start_s: float = 0.0, end_s: float | None = None) -> dict | None:
    """The sound of a media file between ``start_s`` and ``end_s`` seconds as ComfyUI AUDIO
    ``{"waveform": float32 tensor [1, C, T], "sample_rate": int}``, or None when the file has no sound (or
    no sound in that span). Files PyAV cannot open (a GIF, a folder of frames) have none."""
    import av
    import torch

    try:
        container = av.open(str(path))
    except Exception:  # noqa: BLE001 - not a container FFmpeg knows: no sound to pass on
        return None
    with container:
        streams = container.streams.audio
        if not streams:
            return None
        stream = streams[0]
        rate = stream.rate or stream.codec_context.sample_rate
        chunks, first = [], None
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            if frame.format.is_packed:  # [1, T*C] interleaved
                data = data.reshape(-1, frame.layout.nb_channels).T
            if first is None:
                first = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
            chunks.append(data.astype(np.float32) if data.dtype.kind == "f" else
                          data.astype(np.float32) / float(np.iinfo(data.dtype).max))
    if not chunks or not rate:
        return None
    samples = np.concatenate(chunks, axis=1)
    begin = max(0, round((start_s - (first or 0.0)) * rate))
    end = samples.shape[1] if end_s is None else max(begin, round((end_s - (first or 0.0)) * rate))
    samples = samples[:, begin:end]
    if samples.shape[1] == 0:
        return None
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples))[None], "sample_rate": int(rate)}
