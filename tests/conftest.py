"""Shared test setup: the repo root is importable as the ComfyUI custom-node folder would be."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)

#: The node tests' fixtures (a tiny checkpoint, standalone folders, the sample clips).
pytest_plugins = ["_node_fixtures"]
