"""pvtt_train, reached the way this package was: ``<pack>.pvtt_train`` when ComfyUI loads the pack
(``pvtt_accel`` is then ``<pack>.pvtt_accel``), plain ``pvtt_train`` on the CLI and in tests.
Importing it relative to our own package keeps one copy of each module per process."""

from __future__ import annotations

import importlib
from types import ModuleType

_PACK = __package__.rpartition(".")[0]


def train_module(name: str) -> ModuleType:
    """``train_module("data.batches")`` is pvtt_train.data.batches, imported next to this package."""
    return importlib.import_module(f"{_PACK}.pvtt_train.{name}" if _PACK else f"pvtt_train.{name}")
