"""The fit choice (crop, pad, stretch) between a designer's clip and the model's working size."""

from __future__ import annotations

import importlib

import pytest
import torch
from _comfy_pack import PACKAGE
from _node_fixtures import folders, model, models_dir, outputs, run, sample_inputs  # noqa: F401

from pvtt_train.media.fit import FITS, from_model, plan_fit, to_model
from pvtt_train.media.resize import resize_video

pipeline = importlib.import_module(f"{PACKAGE}.pvtt_train.pipeline")
sampling_nodes = importlib.import_module(f"{PACKAGE}.nodes.sampling_nodes")


def ramp(frames, height, width):
    """A clip whose every pixel differs, so a misplaced crop or bar shows."""
    y = torch.linspace(0, 1, height).view(1, height, 1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width, 1)
    t = torch.linspace(0, 1, frames).view(frames, 1, 1, 1)
    return torch.cat([y.expand(frames, height, width, 1), x.expand(frames, height, width, 1),
                      t.expand(frames, height, width, 1)], dim=-1)


def test_crop_is_the_models_aspect_ratio_centred_without_a_mask():
    plan = plan_fit("crop", (36, 64), (16, 16))
    assert plan.region == (0, 14, 36, 36)  # 36x36 in the middle of 64 columns
    assert plan.rendered == (36, 36) and plan.scale == 36 / 16


def test_crop_shifts_to_keep_the_masks_box_inside():
    mask = torch.zeros(3, 36, 64)
    mask[1, 10:20, 55:62] = 1  # near the right edge, in one frame only
    plan = plan_fit("crop", (36, 64), (16, 16), mask)
    top, left, height, width = plan.region
    assert (height, width) == (36, 36)
    assert left <= 55 and left + width >= 62 and left == 26  # the least shift from the centre (14) that holds it
    rendered = to_model(plan, mask[..., None])[..., 0]
    assert rendered.shape == (3, 16, 16) and float(rendered.sum()) > 0  # the mask survives the crop


def test_crop_keeps_the_template_outside_and_pastes_the_render_inside():
    clip = ramp(2, 36, 64)
    mask = torch.zeros(2, 36, 64)
    mask[:, 10:20, 5:12] = 1
    plan = plan_fit("crop", (36, 64), (16, 16), mask)
    top, left, height, width = plan.region
    assert (top, left, height, width) == (0, 5, 36, 36)  # moved left from 14 to hold the mask's columns 5..11
    rendered = torch.full((2, 16, 16, 3), 0.25)
    out = from_model(plan, rendered, clip)
    assert out.shape == clip.shape
    assert torch.equal(out[:, :, :5], clip[:, :, :5]) and torch.equal(out[:, :, 41:], clip[:, :, 41:])
    assert torch.allclose(out[:, :, 5:41], torch.full_like(out[:, :, 5:41], 0.25))


def test_a_mask_larger_than_the_crop_centres_the_crop_on_it():
    mask = torch.zeros(1, 10, 40)
    mask[0, 2:8, 5:35] = 1  # 30 columns wide, the crop only 10
    plan = plan_fit("crop", (10, 40), (8, 8), mask)
    assert plan.region == (0, 15, 10, 10)


def test_pad_round_trips_exactly_when_no_resampling_is_needed():
    clip = ramp(3, 8, 16)
    plan = plan_fit("pad", (8, 16), (16, 16))
    assert plan.padding == (4, 4, 0, 0) and plan.rendered == (16, 16)
    boxed = to_model(plan, clip)
    assert boxed.shape == (3, 16, 16, 3)
    assert float(boxed[:, :4].abs().max()) == 0 and float(boxed[:, 12:].abs().max()) == 0  # black bars
    assert torch.equal(from_model(plan, boxed, clip), clip)


def test_pad_round_trip_through_a_smaller_working_size_keeps_the_aspect_ratio():
    clip = ramp(2, 30, 60)
    plan = plan_fit("pad", (30, 60), (16, 16))
    assert plan.padding == (15, 15, 0, 0)
    back = from_model(plan, to_model(plan, clip), clip)
    assert back.shape == clip.shape
    # a smooth ramp survives letterbox -> 16x16 -> un-letterbox within resampling error
    assert float((back - clip)[:, 2:-2, 2:-2].abs().max()) < 0.08


def test_stretch_is_the_old_resize_both_ways():
    clip = ramp(2, 30, 60)
    plan = plan_fit("stretch", (30, 60), (16, 16))
    assert torch.equal(to_model(plan, clip), resize_video(clip, 16, 16))
    small = resize_video(clip, 16, 16)
    assert torch.equal(from_model(plan, small, clip), resize_video(small, 30, 60))
    assert plan.effective_size == (16, 16)


def test_unknown_fit_is_refused():
    with pytest.raises(ValueError, match="crop, pad, stretch"):
        plan_fit("zoom", (8, 8), (4, 4))


# --- the node -------------------------------------------------------------------------------------

def test_fit_is_the_last_optional_widget_defaulting_to_crop():
    schema = sampling_nodes.PVTTTemplateTransfer.INPUT_TYPES()
    optional = list(schema["optional"])
    assert optional[-1] == "fit" and optional[:3] == ["prompt", "negative_prompt", "photo_detail"]
    choices, options = schema["optional"]["fit"]
    assert list(choices) == list(FITS) and options["default"] == "crop" and options["tooltip"]
    assert list(schema["required"]) == ["mask", "product_image", "steps", "seed", "preserve_background"]


def test_an_old_workflow_without_fit_opens_with_crop():
    """A saved workflow's widgets_values lists values in widget order; one saved before ``fit`` existed
    ends at photo_detail. The frontend fills a missing trailing widget with its default."""
    schema = sampling_nodes.PVTTTemplateTransfer.INPUT_TYPES()
    widgets = [n for n, spec in {**schema["required"], **schema["optional"]}.items()
               if isinstance(spec[0], list) or spec[0] in ("INT", "BOOLEAN", "STRING", "FLOAT")]
    old_values = [0, 7, "fixed", True, "", "", True]  # steps, seed, control_after_generate, ..., photo_detail
    assert widgets[:-1] == ["steps", "seed", "preserve_background", "prompt", "negative_prompt", "photo_detail"]
    names = ["steps", "seed", None, "preserve_background", "prompt", "negative_prompt", "photo_detail", "fit"]
    restored = {n: (old_values[i] if i < len(old_values) else schema["optional"][n][1]["default"])
                for i, n in enumerate(names) if n}
    assert restored["fit"] == "crop"
    # and the node called without the widget (an API prompt saved before it) uses crop too
    import inspect
    assert inspect.signature(sampling_nodes.PVTTTemplateTransfer.transfer).parameters["fit"].default == "crop"


def test_pipeline_default_is_stretch_so_existing_callers_keep_their_numbers():
    import inspect
    assert inspect.signature(pipeline.transfer).parameters["fit"].default == "stretch"


@pytest.mark.parametrize("fit", FITS)
def test_every_fit_gives_a_clip_at_the_template_size(model, sample_inputs, fit):
    template, mask, product = sample_inputs
    wide = torch.cat([template, template.flip(2)], dim=2)  # twice as wide as tall
    wide_mask = torch.cat([mask, torch.zeros_like(mask)], dim=2)
    out = outputs(run("PVTTTemplateTransfer", model=model, template_video=wide, mask=wide_mask,
                      product_image=product, steps=0, seed=0, preserve_background=True, fit=fit))[0]
    assert out.shape == wide.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    if fit == "crop":  # outside the square crop around the mask: the template's own pixels
        top, left, height, width = plan_fit("crop", tuple(wide.shape[1:3]), (16, 16), wide_mask).region
        assert (height, width) == (wide.shape[1], wide.shape[1]) and left + width < wide.shape[2]
        assert torch.equal(out[:, :, left + width:], wide[:, :, left + width:])
        assert not torch.equal(out[:, :, left: left + width], wide[:, :, left: left + width])
