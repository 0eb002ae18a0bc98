"""Paste-residual prediction (pvtt_train.models.paste_residual) on the embedded model's classes."""

from __future__ import annotations

import json

import pytest
import torch

from pvtt_train.errors import CheckpointError
from pvtt_train.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from pvtt_train.models.paste_residual import RESIDUAL_PREDICTIONS, RESIDUAL_STD, paste_base, zero_output
from pvtt_train.models.pvtt_model import WanConcatPVTT, build_model
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.train.teacher import flow_matching_loss
from tests._tiny import SMALL_BACKBONE, paste_batch


def _model(prediction="paste_residual"):
    torch.manual_seed(0)
    model = WanConcatPVTT(SMALL_BACKBONE, prediction=prediction)
    if prediction in RESIDUAL_PREDICTIONS:
        zero_output(model.backbone)
    return model


def _clean_estimate(model, x_t, s, cond):
    sigma = torch.full((x_t.shape[0],), s)
    return x_t - s * model.velocity(x_t, sigma, cond)


def test_an_untrained_residual_model_predicts_the_paste_composite_at_every_noise_level():
    model, batch = _model(), paste_batch()
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    base = paste_base(cond.features)
    expected = model.encode(batch["template"] * (1 - batch["mask"][..., None]) + batch["paste"])
    assert torch.allclose(base, expected, atol=1e-6)
    for s in (0.02, 0.5, 1.0):
        sigma = torch.full((2,), s)
        x_t = torch.randn_like(base)
        x0 = x_t - sigma.view(-1, 1, 1, 1, 1) * model.velocity(x_t, sigma, cond)
        assert torch.allclose(x0, base, atol=1e-5)


def test_a_dropped_reference_leaves_a_neutral_region_in_the_base():
    model, batch = _model(), paste_batch()
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    sigma = torch.full((2,), 0.5)
    x_t = torch.randn_like(cond.background)
    x0 = x_t - 0.5 * model.velocity(x_t, sigma, cond, keep_reference=False)
    inside = cond.region.expand_as(x0) > 0.5
    assert x0[inside].abs().max() < 1e-5  # model space 0 = grey
    assert torch.allclose(x0[~inside], cond.background[~inside], atol=1e-5)


def test_the_prediction_survives_a_checkpoint_and_older_files_read_as_velocity(tmp_path):
    model = _model()
    meta = {"stage": "teacher", "schedule": {"num_train_timesteps": 1000, "shift": 1.0},
            "sampler": {"kind": "euler_cfg", "steps": 4, "cfg": 1.0}, "video": {"frames": 5, "height": 8, "width": 8}}
    path = save_checkpoint(tmp_path / "t.safetensors", model, meta)
    assert read_metadata(path)["model"]["prediction"] == "paste_residual"
    assert load_checkpoint(path).model.prediction == "paste_residual"
    assert build_model({"arch": "wan_concat", "backbone_config": model.config()["backbone_config"]}).prediction \
        == "velocity"
    assert "prediction" not in _model("velocity").config()  # velocity files stay byte-compatible


def test_an_unknown_prediction_in_a_checkpoint_is_refused_with_the_choices(tmp_path):
    model = _model()
    meta = {"stage": "teacher", "schedule": {"num_train_timesteps": 1000, "shift": 1.0},
            "sampler": {"kind": "euler_cfg", "steps": 4, "cfg": 1.0}, "video": {"frames": 5, "height": 8, "width": 8}}
    path = save_checkpoint(tmp_path / "t.safetensors", model, meta)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    pvtt = json.loads(header["__metadata__"]["pvtt"])
    pvtt["model"]["prediction"] = "epsilon"
    header["__metadata__"]["pvtt"] = json.dumps(pvtt)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + path.read_bytes()[8 + header_len:])
    with pytest.raises(CheckpointError, match="model.prediction.*epsilon.*paste_residual"):
        load_checkpoint(path)


def test_the_residual_teacher_is_scored_on_its_clean_estimate_and_stays_finite_near_zero_noise():
    model, batch = _model(), paste_batch()
    g = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(model, batch, FlowSchedule(), 4.0, 0.0, g)
    # The untrained model's clean estimate is the paste composite: its error is the target's residual.
    residual = model.encode(batch["target"]) - model.encode(batch["template"] * (1 - batch["mask"][..., None])
                                                            + batch["paste"])
    weight = 1 + 3 * batch["mask"][:, None]
    expected = (weight * residual ** 2).mean() / weight.expand_as(residual).mean()
    assert torch.allclose(loss, expected, rtol=1e-4)
    sigma = torch.zeros(2)
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    assert torch.isfinite(model.velocity(cond.background, sigma, cond)).all()


def _edm_setup(seed=0):
    model, batch = _model("paste_residual_edm"), paste_batch()
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.backbone.proj_out.weight, std=0.5)  # a network that says something
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    return model, cond


def test_the_edm_residual_keeps_the_noisy_input_near_clean_whatever_the_network_says():
    model, cond = _edm_setup()
    x0 = torch.randn_like(cond.background)
    for s in (1e-4, 1e-3):
        x_t = FlowSchedule.noise(x0, torch.randn_like(x0), torch.tensor(s))
        # The skip carries x_t / (1 - s); only the network's c_out ~ s share is left of its say.
        assert (_clean_estimate(model, x_t, s, cond) - x_t).abs().max() < 20 * s
    # Plain paste_residual keeps the network's whole correction there.
    plain = _model("paste_residual")
    plain.load_state_dict(model.state_dict())
    x_t = FlowSchedule.noise(x0, torch.randn_like(x0), torch.tensor(1e-3))
    assert (_clean_estimate(plain, x_t, 1e-3, cond) - x_t).abs().max() > 0.5


def test_the_edm_residual_at_pure_noise_is_the_paste_plus_the_scaled_network_output():
    model, cond = _edm_setup()
    x_t = torch.randn_like(cond.background)
    out = model.backbone(hidden_states=torch.cat([x_t, cond.features], dim=1), timestep=torch.full((2,), 1000.0),
                         encoder_hidden_states=model.context.expand(2, -1, -1), return_dict=False)[0]
    expected = paste_base(cond.features) + RESIDUAL_STD * out
    assert torch.allclose(_clean_estimate(model, x_t, 1.0, cond), expected, atol=1e-5)


def test_the_edm_velocity_matches_the_skip_formula_in_between():
    model, cond = _edm_setup()
    x_t = torch.randn_like(cond.background)
    s = 0.3
    out = model.backbone(hidden_states=torch.cat([x_t, cond.features], dim=1), timestep=torch.full((2,), 1000 * s),
                         encoder_hidden_states=model.context.expand(2, -1, -1), return_dict=False)[0]
    e2, sigma_edm = RESIDUAL_STD ** 2, s / (1 - s)
    c_skip, c_out = e2 / (e2 + sigma_edm ** 2), sigma_edm * RESIDUAL_STD / (e2 + sigma_edm ** 2) ** 0.5
    base = paste_base(cond.features)
    expected = base + c_skip * (x_t / (1 - s) - base) + c_out * out
    assert torch.allclose(_clean_estimate(model, x_t, s, cond), expected, atol=1e-5)


def test_an_untrained_edm_residual_model_starts_from_the_paste_and_survives_a_checkpoint(tmp_path):
    model, batch = _model("paste_residual_edm"), paste_batch()
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    x_t = torch.randn_like(cond.background)
    assert torch.allclose(_clean_estimate(model, x_t, 1.0, cond), paste_base(cond.features), atol=1e-5)
    meta = {"stage": "teacher", "schedule": {"num_train_timesteps": 1000, "shift": 1.0},
            "sampler": {"kind": "euler_cfg", "steps": 4, "cfg": 1.0}, "video": {"frames": 5, "height": 8, "width": 8}}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "t.safetensors", model, meta))
    assert loaded.model.prediction == "paste_residual_edm"
    g = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(loaded.model, batch, FlowSchedule(), 4.0, 0.0, g)
    assert torch.isfinite(loss) and loss > 0
