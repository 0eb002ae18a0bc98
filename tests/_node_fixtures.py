"""Shared fixtures of the node tests: a random-weights tiny checkpoint, standalone folders, sample clips.

Each node is executed the way ComfyUI calls it: a fresh instance, its FUNCTION with keyword inputs.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from _comfy_pack import PACKAGE, load_pack

pack = load_pack()
nodes = pack.NODE_CLASS_MAPPINGS
paths = importlib.import_module(f"{PACKAGE}.nodes.paths")
checkpoint = importlib.import_module(f"{PACKAGE}.pvtt_train.models.checkpoint")
pvtt_model = importlib.import_module(f"{PACKAGE}.pvtt_train.models.pvtt_model")
schedule = importlib.import_module(f"{PACKAGE}.pvtt_train.models.schedule")

TINY_NAME = "tiny_2step.safetensors"
TEMPLATE, MASK, PRODUCT = "samples/pvtt_template.mp4", "samples/pvtt_mask.mp4", "samples/pvtt_product.png"


def run(node_id: str, **inputs):
    """Execute a node as ComfyUI does: a fresh instance, its FUNCTION called with keyword inputs."""
    cls = nodes[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def outputs(value):
    """A node's outputs tuple, also when it returns ComfyUI's {"ui": ..., "result": (...)} form."""
    return value.get("result", ()) if isinstance(value, dict) else value


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models folder holding one random-weights tiny checkpoint with a 2-step few-step sampler."""
    folder = tmp_path_factory.mktemp("models_pvtt")
    torch.manual_seed(0)
    model = pvtt_model.WanConcatPVTT(pvtt_model.TINY_BACKBONE)
    checkpoint.save_checkpoint(folder / TINY_NAME, model, {
        "stage": "student",
        "schedule": schedule.FlowSchedule().to_dict(),
        "sampler": {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]},
        "video": {"frames": 9, "height": 16, "width": 16},
        "conditioning": {"reference": "aligned_paste", "uncond": "zero_reference"},
        "provenance": {"trainer": "tests/test_nodes.py", "weights": "random"},
    })
    return folder


@pytest.fixture
def folders(monkeypatch, tmp_path, models_dir):
    """Standalone folders: the tiny model, an empty input folder and a fresh output folder."""
    monkeypatch.setenv("PVTT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("PVTT_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("PVTT_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setattr(paths, "SHIPPED_MODELS_DIR", tmp_path / "no_shipped_models")
    (tmp_path / "input").mkdir()
    return tmp_path


@pytest.fixture
def model(folders):
    return run("PVTTLoadModel", model_name=TINY_NAME)[0]


@pytest.fixture
def sample_inputs(folders):
    template = run("PVTTLoadVideo", video=TEMPLATE, frame_load_cap=0, skip_first_frames=0, select_every_nth=1)[0]
    mask = run("PVTTLoadVideo", video=MASK, frame_load_cap=0, skip_first_frames=0, select_every_nth=1)[1]
    product = run("PVTTLoadImage", image=PRODUCT)[0]
    return template, mask, product
