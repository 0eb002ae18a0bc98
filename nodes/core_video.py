"""Core ComfyUI's VIDEO type, in and out of PVTT's IMAGE clips.

A VIDEO (``comfy_api`` ``VideoInput``: core Load Video's ``VideoFromFile``, Create Video's
``VideoFromComponents``) gives its frames, sound and frame rate through ``get_components()``; PVTT reads
only that, so any VideoInput works. PVTT's own VIDEO output is core's ``VideoFromComponents``; outside
ComfyUI (tests, scripts), where ``comfy_api`` does not exist, a small stand-in with the same
``get_components`` / ``get_dimensions`` / ``get_duration`` / ``save_to`` methods is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any


@dataclass
class Components:
    """The stand-in for core's ``VideoComponents``: frames [F, H, W, 3] in 0..1, AUDIO or None, frame rate."""

    images: Any
    audio: dict | None
    frame_rate: Fraction
    metadata: dict | None = None


class PVTTVideo:
    """VIDEO made of frames, for use outside ComfyUI (core's ``VideoFromComponents`` inside it)."""

    def __init__(self, components: Components):
        self._components = components

    def get_components(self) -> Components:
        return self._components

    def get_dimensions(self) -> tuple[int, int]:
        return int(self._components.images.shape[2]), int(self._components.images.shape[1])

    def get_duration(self) -> float:
        return float(self._components.images.shape[0] / self._components.frame_rate)

    def save_to(self, path, format="auto", codec="auto", metadata=None):  # noqa: A002 - core's signature
        from ..pvtt_train.media.av_io import write_mp4

        frames = (self._components.images.clamp(0, 1) * 255).round().byte().cpu().numpy()
        write_mp4(path, frames, float(self._components.frame_rate), self._components.audio, metadata)


def make_video(images, fps: float, audio: dict | None = None):
    """A core VIDEO of ``images`` [F, H, W, 3] (0..1) at ``fps`` with ``audio`` (AUDIO or None)."""
    rate = Fraction(round(float(fps) * 1000), 1000)
    try:
        from comfy_api.input_impl import VideoFromComponents
        from comfy_api.util import VideoComponents
    except ImportError:
        return PVTTVideo(Components(images=images, audio=audio, frame_rate=rate))
    return VideoFromComponents(VideoComponents(images=images, audio=audio, frame_rate=rate))


def video_parts(video, name: str = "template_core_video"):
    """(frames [F, H, W, 3] float in 0..1, fps, AUDIO or None) of a core VIDEO."""
    from ..pvtt_train.errors import InputError

    if not hasattr(video, "get_components"):
        raise InputError(f"PVTT: {name} must be a core ComfyUI VIDEO (from Load Video or Create Video); got "
                         f"{type(video).__name__}.")
    try:
        parts = video.get_components()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file FFmpeg cannot decode: say which input
        raise InputError(f"PVTT: could not read the frames of {name}: {exc}") from exc
    images = parts.images
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"PVTT: {name} holds no frames.")
    return images[..., :3].float(), float(parts.frame_rate), parts.audio


def template_frames(template_video=None, template_core_video=None, node: str = "this node"):
    """The template clip as IMAGE, from exactly one of the IMAGE socket and the VIDEO socket."""
    from ..pvtt_train.errors import InputError

    if template_video is None and template_core_video is None:
        raise InputError(f"PVTT: {node} needs the template clip: connect template_video (IMAGE, from PVTT Load "
                         f"Video) or template_core_video (VIDEO, from core Load Video or Create Video).")
    if template_video is not None and template_core_video is not None:
        raise InputError(f"PVTT: {node} has both template_video and template_core_video connected; connect only "
                         f"one, so it is clear which clip is the template.")
    if template_video is not None:
        return template_video
    return video_parts(template_core_video)[0]
