"""Wan-VACE diffusers folders: pickles are never opened, however they are referenced (issue 12, defect 14),
and every number the folder's files give is checked before diffusers allocates anything (defect 8, 9).

Each case breaks one file of a real tiny Wan-VACE folder (``_wan_fixtures``) and loads it for real.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from _wan_fixtures import make_wan_vace_folder
from safetensors.torch import load_file, save_file

from pvtt_train.errors import CheckpointError
from pvtt_train.models.loading import load_model

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_wan_vace_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-VACE-tiny-diffusers")


@pytest.fixture
def folder(pristine, tmp_path):
    copy = tmp_path / "wan"
    shutil.copytree(pristine, copy)
    return copy


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test the moment anything unpickles (torch.load goes through pickle too)."""
    def refuse(*args, **kwargs):
        pytest.fail("a pickle file was opened")
    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)


class _Payload:
    """Unpickling this creates a folder: proof of code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def shard_as_pickle(folder, shard_names=("diffusion_pytorch_model-00001-of-00001.bin",)):
    """Replace transformer/'s single safetensors file by an index whose shards are ``shard_names``
    (the tensors split between them), written as safetensors or pickles by their suffix."""
    sub = folder / "transformer"
    state = load_file(str(sub / WEIGHTS))
    (sub / WEIGHTS).unlink()
    names = sorted(state)
    weight_map, parts = {}, {}
    for i, key in enumerate(names):
        shard = shard_names[i * len(shard_names) // len(names)]
        weight_map[key] = shard
        parts.setdefault(shard, {})[key] = state[key]
    for shard, tensors in parts.items():
        if shard.endswith(".safetensors"):
            save_file(tensors, str(sub / shard))
        else:
            torch.save(tensors, sub / shard)
    (sub / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sub


def test_safetensors_index_naming_a_bin_shard_is_refused_unopened(folder, no_unpickling):
    shard_as_pickle(folder)
    with pytest.raises(CheckpointError) as excinfo:
        load_model(folder)
    message = str(excinfo.value)
    assert f"transformer/{INDEX} maps" in message
    assert "'diffusion_pytorch_model-00001-of-00001.bin', which is not a .safetensors file" in message
    assert "Convert the shard with safetensors" in message


def test_index_mixing_safetensors_and_bin_shards_is_refused_unopened(folder, no_unpickling):
    shard_as_pickle(folder, ("part-1.safetensors", "part-2.bin"))
    with pytest.raises(CheckpointError, match=r"to the shard 'part-2\.bin', which is not a \.safetensors file"):
        load_model(folder)


def test_index_shard_outside_the_component_folder_is_refused(folder):
    sub = shard_as_pickle(folder, ("part-1.safetensors",))
    index = json.loads((sub / INDEX).read_text())
    (folder / "elsewhere.safetensors").write_bytes((sub / "part-1.safetensors").read_bytes())
    index["weight_map"] = {k: "../elsewhere.safetensors" for k in index["weight_map"]}
    (sub / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"names the shard '\.\./elsewhere\.safetensors', which lies outside"):
        load_model(folder)


def test_index_naming_a_missing_shard_is_refused(folder):
    sub = shard_as_pickle(folder, ("part-1.safetensors", "part-2.safetensors"))
    (sub / "part-2.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"names the shard 'part-2\.safetensors', which is missing"):
        load_model(folder)


def test_sharded_safetensors_still_load(folder, pristine, no_unpickling):
    shard_as_pickle(folder, ("part-1.safetensors", "part-2.safetensors"))
    sharded, whole = load_model(folder), load_model(pristine)
    for (name, a), (_, b) in zip(sharded.model.state_dict().items(), whole.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_live_pickle_next_to_the_safetensors_is_never_opened(folder, no_unpickling):
    marker = folder / "unpickled"
    (folder / "transformer" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    loaded = load_model(folder)
    assert loaded.model.transformer is not None and not marker.exists()


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_weights(folder, edit):
    path = folder / "transformer" / WEIGHTS
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def _nan_weight(state):
    state["proj_out.weight"] = torch.full_like(state["proj_out.weight"], float("nan"))


def _int_weight(state):
    state["proj_out.weight"] = state["proj_out.weight"].to(torch.int32)


BROKEN = {
    "layers-1e6": (lambda f: _edit_json(f / "transformer" / "config.json", num_layers=10 ** 6),
                   r"transformer/config\.json: num_layers is 1000000; it must be a whole number in \[1, 200\]"),
    "head-dim-string": (lambda f: _edit_json(f / "transformer" / "config.json", attention_head_dim="16"),
                        r"transformer/config\.json: attention_head_dim is a string \"16\""),
    "vace-layer-beyond": (lambda f: _edit_json(f / "transformer" / "config.json", vace_layers=[0, 5]),
                          r"vace_layers is a list \[0, 5\].*below num_layers \(2\)"),
    "vae-z-dim-huge": (lambda f: _edit_json(f / "vae" / "config.json", z_dim=10 ** 5),
                       r"vae/config\.json: z_dim is 100000; it must be a whole number in \[1, 256\]"),
    "scheduler-steps-1e8": (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json",
                                                 num_train_timesteps=10 ** 8),
                            r"scheduler_config\.json: num_train_timesteps is 100000000; .*\[1, 10000\]"),
    "scheduler-shift-nan": (lambda f: (f / "scheduler" / "scheduler_config.json").write_text(
        (f / "scheduler" / "scheduler_config.json").read_text().replace('"flow_shift": 3.0', '"flow_shift": NaN')),
        r"scheduler_config\.json: flow_shift is nan; it must be a finite number in \(0, 100\]"),
    "settings-steps-0": (lambda f: _edit_json(f / "pvtt.json", sampler={"steps": 0}),
                         r"pvtt\.json: sampler\.steps is 0; it must be a whole number in \[1, 1000\]"),
    "settings-video-list": (lambda f: _edit_json(f / "pvtt.json", video=[9, 32, 32]),
                            r"pvtt\.json: video is a list \[9, 32, 32\]; it must be an object"),
    "settings-beyond-rope": (lambda f: _edit_json(f / "pvtt.json", video={"frames": 9, "height": 320, "width": 32}),
                             r"pvtt\.json: video of 9 frames at 32x320 does not fit the model.*rope_max_seq_len"),
    "nested-config": (lambda f: (f / "vae" / "config.json").write_text("[" * 100_000 + "]" * 100_000),
                      r"vae/config\.json: its JSON is nested too deeply"),
    "nan-weight": (lambda f: _edit_weights(f, _nan_weight),
                   r"transformer: weight 'proj_out\.weight' holds 512 NaN/Inf values of 512"),
    "int-weight": (lambda f: _edit_weights(f, _int_weight),
                   r"diffusion_pytorch_model\.safetensors: tensor 'proj_out\.weight' is stored as I32"),
    "nan-prompt-embeds": (lambda f: save_file({"prompt_embeds": torch.full((1, 3, 32), float("nan"))},
                                              str(f / "prompt_embeds.safetensors")),
                          r"prompt_embeds\.safetensors: weight 'prompt_embeds' holds 96 NaN/Inf values"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_folder_numbers_are_checked_before_loading(folder, case):
    breaks, message = BROKEN[case]
    breaks(folder)
    with pytest.raises(CheckpointError, match=message) as excinfo:
        load_model(folder)
    assert "Traceback" not in str(excinfo.value)


def test_folder_too_large_for_memory_is_refused_before_diffusers_allocates(folder, monkeypatch):
    from diffusers import WanVACETransformer3DModel

    from pvtt_train.models import model_budget

    _edit_json(folder / "transformer" / "config.json", num_layers=40, num_attention_heads=40, attention_head_dim=128,
               ffn_dim=13824, text_dim=4096, vace_layers=list(range(0, 40, 5)))
    monkeypatch.setattr(model_budget, "available_bytes", lambda device: 8 * 10 ** 9)
    monkeypatch.setattr(WanVACETransformer3DModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("diffusers was asked to allocate the model")))
    with pytest.raises(CheckpointError, match=r"wan: its weights need about [4-9]\d\.\d\d GB, but only 8\.00 GB"):
        load_model(folder)


def test_a_few_step_sampler_in_pvtt_json_is_not_given_wans_cfg(folder):
    student = {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]}
    _edit_json(folder / "pvtt.json", sampler=student)
    assert load_model(folder).metadata["sampler"] == student
