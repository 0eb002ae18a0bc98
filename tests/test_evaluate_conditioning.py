"""Evaluation conditions a model exactly as training did: on the paste its batch carries."""

import torch
from _tiny import MICRO_BACKBONE

from pvtt_train.data.batches import make_batch
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.eval.evaluate import generate
from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
from pvtt_train.models.pvtt_model import WanConcatPVTT

META = {"stage": "test", "schedule": {"shift": 1.0, "num_train_timesteps": 1000},
        "sampler": {"kind": "euler_cfg", "steps": 2, "cfg": 1.0}, "video": {"frames": 9, "height": 16, "width": 16}}


def _loaded(tmp_path):
    torch.manual_seed(0)
    return load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", WanConcatPVTT(MICRO_BACKBONE), META))


def test_a_model_trained_on_the_lit_warp_paste_is_evaluated_on_it(tmp_path, monkeypatch):
    loaded = _loaded(tmp_path)
    batch = make_batch(SyntheticVideoGenerator(SyntheticConfig(paste="supersampled_warp_lit")), [3, 4])
    seen = []
    original = loaded.model.condition_from_paste
    monkeypatch.setattr(loaded.model, "condition_from_paste",
                        lambda t, m, p: seen.append(p) or original(t, m, p), raising=False)
    generate(loaded, batch, seed=0)
    assert len(seen) == 1 and torch.equal(seen[0], batch["paste"])


def test_the_16x16_fitted_paste_gives_the_same_result_through_the_batch_as_through_the_model(tmp_path):
    """Models trained on the fitted paste (the shipped ones) are scored exactly as before."""
    loaded = _loaded(tmp_path)
    batch = make_batch(SyntheticVideoGenerator(SyntheticConfig()), [3, 4])
    via_batch = generate(loaded, batch, seed=0).raw
    without = {k: v for k, v in batch.items() if k != "paste"}
    assert torch.equal(via_batch, generate(loaded, without, seed=0).raw)
