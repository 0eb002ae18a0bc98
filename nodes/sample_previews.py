"""Previews of the pack's shipped samples in ComfyUI's upload widgets.

PVTT Load Video / Load Image list the pack's ``samples/`` files as ``samples/<name>`` beside the input folder's
files. The frontend previews a widget value the way it previews any input file: ``/view?type=input&
subfolder=samples&filename=<name>`` (or ``filename=samples/<name>``), which ComfyUI looks up in
``input/samples/`` and answers 404, so the preview stayed empty. A small aiohttp middleware, added to
ComfyUI's server when the pack loads, answers exactly those requests with the shipped file, when the input
folder has no file of that name (a user's own ``input/samples/<name>`` is still served by ComfyUI). Widget
values are unchanged, so saved workflows naming ``samples/<name>`` keep loading.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from . import paths

log = logging.getLogger("[PVTT]")

VIEW_PATHS = ("/view", "/api/view")


def sample_for_view(query: Mapping[str, str]) -> Path | None:
    """The shipped sample a ``/view`` query asks for, or None when ComfyUI should answer it as usual."""
    if query.get("type", "output") != "input":
        return None
    filename = query.get("filename", "").replace("\\", "/")
    subfolder = query.get("subfolder", "").replace("\\", "/").strip("/")
    name = f"{subfolder}/{filename}" if subfolder else filename
    if not name.startswith(paths.SAMPLE_PREFIX) or name.count("/") != 1:
        return None
    own = paths.input_dir() / name
    if own.is_file():
        return None  # the user's own input/samples/<name>: ComfyUI serves it
    try:
        return paths.resolve_media(name)  # inside samples/ only (no .., no symlink out)
    except FileNotFoundError:
        return None


def install(server) -> bool:
    """Adds the middleware to ComfyUI's ``PromptServer`` (before it starts); False when it cannot."""
    from aiohttp import web

    @web.middleware
    async def pvtt_sample_previews(request, handler):
        if request.method in ("GET", "HEAD") and request.path in VIEW_PATHS:
            path = sample_for_view(request.rel_url.query)
            if path is not None:
                return web.FileResponse(path, headers={"Content-Disposition": f'filename="{path.name}"'})
        return await handler(request)

    try:
        server.app.middlewares.append(pvtt_sample_previews)
    except (AttributeError, RuntimeError) as exc:  # no app, or the server already started (middlewares frozen)
        log.warning("PVTT: previews of the shipped samples are unavailable (%s)", exc)
        return False
    return True


def install_in_comfyui() -> bool:
    """``install`` on ComfyUI's running PromptServer, if there is one (nothing outside ComfyUI)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    return install(server) if server is not None else False
