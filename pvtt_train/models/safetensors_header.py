"""Reading a safetensors header (metadata and tensor names) without loading a tensor.

Shared by checkpoints, the lazy tensor source of meta-device loading and the encoders, so a damaged
file is reported the same way wherever it is opened.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from ..errors import CheckpointError


def safetensors_header(path: Path, fix: str) -> tuple[dict, list[str]]:
    """Header metadata and tensor names of a safetensors file, without loading a tensor; a corrupt or
    truncated file is a ``CheckpointError`` that ends with ``fix`` (how to get a good copy)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}, list(fh.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc}). It may be truncated "
                              f"or corrupt: {fix}") from exc
