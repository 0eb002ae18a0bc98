"""Identity encoder and loss: shipped weights, held-out AUC, differentiable crops, loaders and refusals."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import pvtt_train.identity.encoder as enc_mod
from pvtt_train.data.batches import heldout_batch
from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.errors import CheckpointError
from pvtt_train.identity.crops import BACKDROP, product_crops, reference_crops
from pvtt_train.identity.encoder import IdentityEncoder, load_identity_encoder, save_identity_encoder
from pvtt_train.identity.loss import identity_loss
from pvtt_train.identity.train import evaluate_identity_encoder, roc_auc


@pytest.fixture(scope="module")
def shipped():
    return load_identity_encoder()


@pytest.fixture(scope="module")
def clips():
    return heldout_batch(SyntheticConfig(), 4, offset=500)


def test_shipped_encoder_is_frozen_and_unit_norm(shipped, clips):
    assert isinstance(shipped, IdentityEncoder) and not shipped.training
    assert not any(p.requires_grad for p in shipped.parameters())
    emb = shipped(reference_crops(clips["reference"]))
    assert emb.shape == (4, shipped.dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_shipped_encoder_separates_products_on_heldout_clips(shipped):
    """Computed here, not read from the report: 64 held-out clips, 576 same-product frame/photo pairs."""
    report = evaluate_identity_encoder(shipped, clips=64, first=1000, degrade_seed=None)["clean"]
    assert report["auc_all"] >= 0.9
    assert report["auc_template"] >= 0.9
    assert report["auc_twin"] >= 0.8
    assert report["cos_same_mean"] > report["cos_different_mean"] + 0.5


def test_loss_prefers_the_ground_truth(shipped, clips):
    """Per clip: B in the frames beats the template product A (same shape and motion) and another clip's B."""
    mask, ref = clips["mask"], clips["reference"]
    for i in range(len(mask)):
        one = slice(i, i + 1)
        truth = identity_loss(shipped, clips["target"][one], mask[one], ref[one])
        template = identity_loss(shipped, clips["template"][one], mask[one], ref[one])
        other = identity_loss(shipped, clips["target"][one], mask[one], ref[(i + 1) % len(mask)][None])
        assert truth < template and truth < other, i
        assert truth < 0.3, i


def test_gradients_reach_the_frames_not_the_encoder(shipped, clips):
    frames = clips["template"][:2].clone().requires_grad_(True)
    loss = identity_loss(shipped, frames, clips["mask"][:2], clips["reference"][:2])
    loss.backward()
    grad = frames.grad.abs().sum(-1)
    assert torch.isfinite(frames.grad).all()
    assert grad[clips["mask"][:2] > 0.5].mean() > 0  # the product pixels get a signal
    assert grad[clips["mask"][:2] < 0.5].sum() < grad.sum()  # mostly there, not in the scene
    assert all(p.grad is None for p in shipped.parameters())


def test_crops_grey_outside_the_product_and_empty_frames_ignored(shipped, clips):
    frames, mask = clips["target"][:2], clips["mask"][:2].clone()
    mask[0, 3] = 0
    crops, weight = product_crops(frames, mask, size=32)
    assert crops.shape == (18, 3, 32, 32) and crops.min() >= 0 and crops.max() <= 1
    assert weight.tolist() == [1.0] * 3 + [0.0] + [1.0] * 14
    assert torch.allclose(crops[0, :, 0, 0], torch.full((3,), BACKDROP))  # the margin is backdrop
    keep = [f for f in range(9) if f != 3]
    with_empty = identity_loss(shipped, frames[:1], mask[:1], clips["reference"][:1])
    without = identity_loss(shipped, frames[:1, keep], mask[:1, keep], clips["reference"][:1])
    assert torch.allclose(with_empty, without, atol=1e-6)
    nothing = identity_loss(shipped, frames.requires_grad_(True), torch.zeros_like(mask), clips["reference"][:2])
    assert nothing.item() == 0 and nothing.requires_grad


def test_large_frames_are_area_filtered():
    """A 64 px product is cropped at its own size and filtered down: a fine checkerboard averages to grey."""
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    checker = ((yy + xx) % 2).float()[None, None, :, :, None].expand(1, 1, 128, 128, 3)
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., 32:96, 32:96] = 1
    crops, _ = product_crops(checker, mask, size=16)
    assert (crops[0, :, 6:10, 6:10] - 0.5).abs().max() < 0.05


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = IdentityEncoder(width=8, dim=16)
    path = save_identity_encoder(tmp_path / "id.safetensors", model, {"auc": 0.5})
    loaded = load_identity_encoder(str(path))
    assert loaded.config() == {"crop_size": 32, "width": 8, "dim": 16}
    assert enc_mod.read_identity_metadata(path)["report"] == {"auc": 0.5}
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))


def test_roc_auc_counts_ties_half():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert roc_auc(np.array([2.0, 0.0]), np.array([1.0, 1.0])) == 0.5


def _tiny_clip(folder, full: bool):
    transformers = pytest.importorskip("transformers")
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    if full:
        text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text,
                                                               projection_dim=16))
    else:
        model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**vision, projection_dim=16))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("full", [False, True], ids=["clip_vision_model", "clip"])
def test_clip_folder_loads_and_embeds(tmp_path, full):
    folder = _tiny_clip(tmp_path / "clip", full)
    encoder = load_identity_encoder(folder)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.crop_size == 32
    emb = encoder(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_dinov2_folder_loads_with_its_preprocessor(tmp_path, clips):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                       image_size=42, patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 28, "width": 28}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    encoder = load_identity_encoder(tmp_path)
    assert encoder.crop_size == 28 and torch.allclose(encoder.mean, torch.full((1, 3, 1, 1), 0.5))
    frames = clips["target"][:1].clone().requires_grad_(True)
    loss = identity_loss(encoder, frames, clips["mask"][:1], clips["reference"][:1])
    loss.backward()
    assert torch.isfinite(loss) and frames.grad.abs().sum() > 0


class _Payload:
    """Unpickling this creates a directory: the side effect that must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("name", ["encoder.pt", "encoder.pth", "encoder.bin", "encoder.ckpt"])
def test_pickle_files_refused_without_opening(tmp_path, monkeypatch, name):
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    opened = []
    import pvtt_train.models.checkpoint as checkpoint_mod

    monkeypatch.setattr(checkpoint_mod, "safe_open", lambda *a, **k: opened.append(a))  # the header reader
    monkeypatch.setattr(enc_mod, "load_file", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    with pytest.raises(CheckpointError, match="pickle"):
        load_identity_encoder(path)
    assert not marker.exists() and opened == []


def test_hf_folder_with_only_pickled_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp_path / "marker")))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_identity_encoder(tmp_path)
    assert not (tmp_path / "marker").exists()


def test_missing_or_foreign_inputs_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found.*identity-encoder"):
        load_identity_encoder(tmp_path / "nope.safetensors")
    foreign = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a PVTT identity encoder"):
        load_identity_encoder(foreign)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_identity_encoder(truncated)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="CLIP or DINOv2"):
        load_identity_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(CheckpointError, match="pip install transformers"):
        load_identity_encoder(tmp_path)
