"""The three forms of a Wan-VACE model (diffusers folder, ComfyUI-native file, PVTT file): key mapping,
detection, configs read from shapes, meta-device loading, sharded files, the export CLI, and the
commands and the loader node that take a model."""

from __future__ import annotations

import json

import pytest
import torch
from _wan_fixtures import CLIP, TRANSFORMER_CONFIG, VAE_CONFIG, designer_inputs, make_wan_vace_folder
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanVACETransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pvtt_train.__main__ import main
from pvtt_train.errors import CheckpointError
from pvtt_train.models import native_wan, wan_keys
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.models.export_cli import export_comfy
from pvtt_train.models.loading import export_single_file, load_model

#: A tiny transformer whose heads are 128 wide, as ComfyUI assumes, so its whole config is readable from shapes.
COMFY_SHAPED = {**TRANSFORMER_CONFIG, "num_attention_heads": 1, "attention_head_dim": 128, "ffn_dim": 128,
                "rope_max_seq_len": 1024, "num_layers": 4, "vace_layers": [0, 2]}


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A ComfyUI-like models tree: the diffusers folder, its native conversion (diffusion_models/ + vae/)
    and its PVTT single-file export."""
    root = tmp_path_factory.mktemp("models")
    folder = make_wan_vace_folder(root / "wan_vace")
    loaded = load_model(folder)
    export_comfy(loaded, root / "diffusion_models" / "wan_vace.safetensors", root / "vae" / "wan_vae.safetensors")
    export_single_file(loaded, root / "wan_vace_pvtt.safetensors")
    return root


def state(loaded) -> dict[str, torch.Tensor]:
    return loaded.model.state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def assert_same_velocity(a: torch.Tensor, b: torch.Tensor, what) -> None:
    """Same weights in memory of their own, same inputs: the very same numbers."""
    assert torch.equal(a, b), f"{what}: largest difference {(a - b).abs().max():.3g}"


def velocity(loaded, cond=None) -> torch.Tensor:
    """The model's velocity on a fixed noisy latent; ``cond`` (another form's conditioning of the same
    inputs) saves the VAE encodes, whose weights the round-trip tests compare bit for bit."""
    if cond is None:
        template, mask, reference = designer_inputs()
        cond = loaded.model.condition(template[None], mask[None], reference[None])
    x_t = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(1))
    return loaded.model.velocity(x_t, torch.tensor([0.7]), cond)


def conditioning(loaded):
    template, mask, reference = designer_inputs()
    return loaded.model.condition(template[None], mask[None], reference[None])


# --- key mapping -------------------------------------------------------------------------------------------

def test_transformer_names_agree_with_diffusers_own_converter_both_ways():
    with init_empty_weights():
        model = WanVACETransformer3DModel(num_layers=4, vace_layers=[0, 2])
    keys = list(model.state_dict())
    native = {wan_keys.transformer_key_to_native(k): k for k in keys}
    # diffusers' one-way converter (original -> diffusers) is an independent reference for our names
    assert convert_wan_transformer_to_diffusers(dict(native)) == {k: k for k in keys}
    assert {wan_keys.transformer_key_to_diffusers(n): d for n, d in native.items()} == {d: d for d in keys}
    # ComfyUI's detection keys are there under the native names
    assert {"head.modulation", "head.head.weight", "vace_patch_embedding.weight", "vace_blocks.0.before_proj.weight",
            "vace_blocks.1.after_proj.weight", "blocks.0.self_attn.q.weight", "blocks.0.norm3.weight",
            "blocks.0.ffn.0.weight", "time_projection.1.weight", "text_embedding.2.weight"} <= set(native)


def test_vae_names_agree_with_diffusers_own_converter_for_the_real_wan_vae():
    with init_empty_weights():
        vae = AutoencoderKLWan()  # Wan 2.1's VAE: 4 levels, 2 residual blocks each
    keys = list(vae.state_dict())
    mapping = wan_keys.vae_keys_to_native(keys, vae.config.num_res_blocks)
    assert convert_wan_vae_to_diffusers({native: d for d, native in mapping.items()}) == {k: k for k in keys}


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(KeyError):
        wan_keys.transformer_key_to_diffusers("img_emb.proj.0.weight")
    with pytest.raises(KeyError):
        wan_keys.transformer_key_to_native("blocks.0.attn1.add_k_proj.weight")


# --- round trips and detection -------------------------------------------------------------------------------

def test_diffusers_to_native_to_diffusers_is_bit_exact(wan):
    folder = load_model(wan / "wan_vace")
    native = load_model(wan / "diffusion_models" / "wan_vace.safetensors")
    assert_same_weights(state(folder), state(native))
    # the transformer file carries the original names only (plus PVTT's context), no prefix, as UNETLoader wants
    with safe_open(str(wan / "diffusion_models" / "wan_vace.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert wan_keys.native_kind(keys) == "vace"
    assert keys - {native_wan.CONTEXT_KEY} == {wan_keys.transformer_key_to_native(k)
                                               for k in folder.model.transformer.state_dict()}
    assert native.metadata["sampler"] == folder.metadata["sampler"]
    assert native.metadata["video"] == folder.metadata["video"] == CLIP


def test_pvtt_to_comfy_to_pvtt_is_bit_exact(wan, tmp_path):
    pvtt = load_model(wan / "wan_vace_pvtt.safetensors")
    export_comfy(pvtt, tmp_path / "m.safetensors", tmp_path / "v.safetensors")
    again = export_single_file(load_model(tmp_path / "m.safetensors"), tmp_path / "again.safetensors")
    first, second = load_file(wan / "wan_vace_pvtt.safetensors"), load_file(again)
    assert_same_weights(first, second)
    a, b = load_model(wan / "wan_vace_pvtt.safetensors").metadata, load_model(again).metadata
    for key in ("model", "schedule", "sampler", "video", "stage", "conditioning"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model."])
def test_a_native_file_is_detected_behind_comfyui_prefixes(wan, tmp_path, prefix):
    tensors = load_file(wan / "diffusion_models" / "wan_vace.safetensors")
    prefixed = {(k if k == native_wan.CONTEXT_KEY else prefix + k): v for k, v in tensors.items()}
    (tmp_path / "vae").mkdir()
    save_file(load_file(wan / "vae" / "wan_vae.safetensors"), tmp_path / "vae" / "v.safetensors",
              metadata=native_wan.vae_header(load_model(wan / "wan_vace").model.vae))
    path = tmp_path / "diffusion_models" / "prefixed.safetensors"
    path.parent.mkdir()
    header = safe_open(str(wan / "diffusion_models" / "wan_vace.safetensors"), framework="pt").metadata()
    save_file(prefixed, path, metadata=header)
    assert native_wan.is_native_file(path) == "vace"
    assert_same_weights(state(load_model(path)), state(load_model(wan / "wan_vace")))


def test_kinds_of_native_files_are_told_apart(wan):
    assert native_wan.is_native_file(wan / "vae" / "wan_vae.safetensors") == "vae"
    assert native_wan.is_native_file(wan / "wan_vace_pvtt.safetensors") is None
    without_vace = [k for k in load_file(wan / "diffusion_models" / "wan_vace.safetensors")
                    if not k.startswith("vace_")]
    assert wan_keys.native_kind(without_vace) == "wan"
    with pytest.raises(CheckpointError, match="is a Wan VAE, not a diffusion model"):
        load_model(wan / "vae" / "wan_vae.safetensors")


# --- configs read from shapes ----------------------------------------------------------------------------

def test_transformer_config_is_read_from_shapes_as_comfyui_reads_it():
    torch.manual_seed(0)
    model = WanVACETransformer3DModel(**COMFY_SHAPED)
    shapes = {k: tuple(v.shape) for k, v in native_wan.transformer_tensors(model).items()}
    derived = native_wan.transformer_config(shapes)
    expected = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    assert {k: expected[k] for k in derived} == derived
    assert WanVACETransformer3DModel.from_config(derived).config.vace_layers == [0, 2]


def test_the_tiny_fixture_config_comes_back_from_a_pvtt_export(wan):
    loaded = load_model(wan / "diffusion_models" / "wan_vace.safetensors")
    config = loaded.model.transformer.config
    assert {k: config[k] for k in TRANSFORMER_CONFIG} == TRANSFORMER_CONFIG
    assert {k: loaded.model.vae.config[k] for k in VAE_CONFIG} == VAE_CONFIG


def test_a_foreign_native_file_with_heads_not_of_128_is_refused_with_the_fix(wan, tmp_path):
    tensors = load_file(wan / "diffusion_models" / "wan_vace.safetensors")  # no PVTT header: dim 32
    save_file(tensors, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not a multiple of 128"):
        load_model(tmp_path / "foreign.safetensors", vae=wan / "vae" / "wan_vae.safetensors")


def test_a_foreign_native_vae_gets_its_config_from_shapes_and_wan21_statistics(tmp_path):
    config = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True]}
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**config)
    save_file({k: v.contiguous() for k, v in native_wan.vae_tensors(vae).items()}, tmp_path / "vae.safetensors")
    from pvtt_train.models.loading import load_vae_source

    loaded = load_vae_source(tmp_path / "vae.safetensors", torch.float32)
    assert {k: loaded.config[k] for k in config} == config
    with init_empty_weights():
        wan21 = AutoencoderKLWan()  # diffusers' defaults are Wan 2.1's VAE
    assert list(loaded.config.latents_mean) == list(wan21.config.latents_mean)
    assert list(loaded.config.latents_std) == list(wan21.config.latents_std)
    assert_same_weights(loaded.state_dict(), vae.state_dict())


def test_a_native_model_without_a_vae_says_how_to_give_one(wan, tmp_path):
    path = tmp_path / "alone.safetensors"
    path.write_bytes((wan / "diffusion_models" / "wan_vace.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="holds no VAE.*--vae PATH"):
        load_model(path)


# --- meta-device loading ---------------------------------------------------------------------------------

def test_loading_initialises_nothing_randomly(wan, monkeypatch):
    """Every parameter comes from the file: no init function ever touches a real tensor."""
    touched = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_", "zeros_", "ones_"):
        original = getattr(torch.nn.init, name)

        def spy(tensor, *args, _original=original, **kwargs):
            if not tensor.is_meta:
                touched.append(tuple(tensor.shape))
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, spy)
    pvtt = load_checkpoint(wan / "wan_vace_pvtt.safetensors")
    native = load_model(wan / "diffusion_models" / "wan_vace.safetensors")
    assert touched == []
    assert_same_weights(state(pvtt), load_file(wan / "wan_vace_pvtt.safetensors"))
    assert_same_weights(state(native), state(pvtt))


def test_loading_in_bfloat16_reads_straight_into_bfloat16(wan):
    stored = load_file(wan / "wan_vace_pvtt.safetensors")
    for path in (wan / "wan_vace_pvtt.safetensors", wan / "diffusion_models" / "wan_vace.safetensors",
                 wan / "wan_vace"):
        loaded = load_model(path, dtype=torch.bfloat16)
        weights = state(loaded)
        kept = {k for k, v in weights.items() if v.dtype == torch.float32}
        # diffusers' float32 modules (norms, modulation, time embedder) stay float32; all else is bf16
        assert kept and all(any(m in k for m in ("norm", "scale_shift_table", "time_embedder")) for k in kept), kept
        assert sum(v.dtype == torch.bfloat16 for v in weights.values()) > len(weights) // 2
        for key, value in weights.items():
            assert torch.equal(value, stored[key].to(value.dtype)), key


def test_a_sharded_native_model_loads_from_its_index(wan, tmp_path):
    tensors = load_file(wan / "diffusion_models" / "wan_vace.safetensors")
    header = safe_open(str(wan / "diffusion_models" / "wan_vace.safetensors"), framework="pt").metadata()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, tmp_path / name, metadata=header)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}))
    loaded = load_model(index, vae=wan / "vae" / "wan_vae.safetensors")
    assert_same_weights(state(loaded), state(load_model(wan / "wan_vace")))


def test_a_sharded_diffusers_folder_loads(wan, tmp_path):
    folder = make_wan_vace_folder(tmp_path / "sharded")
    model = WanVACETransformer3DModel.from_pretrained(folder / "transformer")
    for f in (folder / "transformer").glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(folder / "transformer", max_shard_size="20KB")
    assert len(list((folder / "transformer").glob("*.safetensors"))) > 1
    assert_same_weights(state(load_model(folder)), state(load_model(wan / "wan_vace")))


# --- the export CLI --------------------------------------------------------------------------------------

def test_export_in_every_format_gives_the_same_velocity(wan, tmp_path, capsys):
    source = wan / "wan_vace"
    main(["export", "--model", str(source), "--out", str(tmp_path / "p.safetensors"), "--format", "pvtt"])
    main(["export", "--model", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "dm" / "c.safetensors"),
          "--format", "comfy", "--vae-out", str(tmp_path / "vae" / "v.safetensors")])
    main(["export", "--model", str(tmp_path / "dm" / "c.safetensors"), "--out", str(tmp_path / "folder"),
          "--format", "diffusers"])
    original = load_model(source)
    cond = conditioning(original)
    reference = velocity(original, cond)
    for path in (tmp_path / "p.safetensors", tmp_path / "dm" / "c.safetensors", tmp_path / "folder"):
        loaded = load_model(path)
        assert loaded.metadata["sampler"] == original.metadata["sampler"]
        assert loaded.metadata["schedule"] == original.metadata["schedule"]
        assert_same_weights(state(loaded), state(original))
        assert_same_velocity(velocity(loaded, cond), reference, path)
    assert json.loads((tmp_path / "folder" / "model_index.json").read_text())["_class_name"] == "WanVACEPipeline"
    assert not list(tmp_path.glob(".*.tmp"))  # the folder was written under a temp name and renamed


def test_export_refuses_to_overwrite_a_folder_and_a_wrong_suffix(wan, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(wan / "wan_vace"), "--out", str(tmp_path / "taken"), "--format", "diffusers"])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(wan / "wan_vace"), "--out", str(tmp_path / "x.ckpt"), "--format", "comfy"])
    assert "writes one .safetensors file" in capsys.readouterr().err


def test_export_writes_in_the_requested_dtype(wan, tmp_path):
    main(["export", "--model", str(wan / "wan_vace"), "--out", str(tmp_path / "b.safetensors"), "--format", "comfy",
          "--dtype", "bfloat16"])
    tensors = load_file(tmp_path / "b.safetensors")
    assert tensors["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    assert tensors["blocks.0.modulation"].dtype == torch.float32  # diffusers keeps it float32


# --- commands and the node take every form ----------------------------------------------------------------

@pytest.mark.parametrize("teacher", ["wan_vace", "diffusion_models/wan_vace.safetensors"])
def test_distill_accepts_a_wan_vace_folder_or_native_file_as_teacher(wan, tmp_path, capsys, teacher):
    """The CLI's checks and the teacher loading pass; what stops it is the lack of training data."""
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", str(wan / teacher), "--run-dir", str(tmp_path / "run"),
              "--models-dir", str(tmp_path / "models"), "--path", "4", "--generator-steps", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "is a folder" not in err and "no PVTT metadata" not in err
    assert "pass --data DATASET (made by prepare-data)" in err


def test_the_loader_node_lists_and_loads_every_form(wan, monkeypatch):
    from _node_fixtures import paths, run

    monkeypatch.setenv("PVTT_MODELS_DIR", str(wan))
    monkeypatch.setattr(paths, "SHIPPED_MODELS_DIR", wan / "none")
    names = paths.model_names()
    assert {"wan_vace", "wan_vace_pvtt.safetensors", "diffusion_models/wan_vace.safetensors"} <= set(names)
    assert not any(name.startswith("wan_vace/") for name in names)  # the folder's own files are not models
    original = load_model(wan / "wan_vace")
    cond = conditioning(original)
    reference = velocity(original, cond)
    for name in ("wan_vace", "diffusion_models/wan_vace.safetensors", "wan_vace_pvtt.safetensors"):
        loaded = run("PVTTLoadModel", model_name=name)[0]
        assert_same_weights(state(loaded), state(original))
        assert_same_velocity(velocity(loaded, cond), reference, name)
