"""The per-step preview follows ComfyUI's preview method and never decodes the clip per step."""

from __future__ import annotations

import enum
import importlib
import sys
import types

import pytest
import torch
from _comfy_pack import PACKAGE
from _node_fixtures import folders, model, models_dir, outputs, run, sample_inputs  # noqa: F401
from _wan_fixtures import designer_inputs, make_wan_vace_folder

step_preview = importlib.import_module(f"{PACKAGE}.nodes.step_preview")
sampling_nodes = importlib.import_module(f"{PACKAGE}.nodes.sampling_nodes")


class LatentPreviewMethod(enum.Enum):
    """ComfyUI's comfy.cli_args.LatentPreviewMethod."""

    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


@pytest.fixture
def comfy_args(monkeypatch):
    """A stand-in ``comfy.cli_args`` whose ``args.preview_method`` the test sets, as --preview-method does."""
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews)
    cli_args.LatentPreviewMethod = LatentPreviewMethod
    package = types.ModuleType("comfy")
    package.cli_args = cli_args
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    return cli_args.args


class Bar:
    def __init__(self):
        self.calls = []

    def update_absolute(self, value, total=None, preview=None):
        self.calls.append((value, total, preview))


def count_decodes(loaded, monkeypatch):
    calls = []
    real = loaded.model.decode

    def decode(x):
        calls.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(loaded.model, "decode", decode)
    return calls


# --- the method ------------------------------------------------------------------------------------

def test_the_method_is_comfyuis_setting(comfy_args):
    assert step_preview.preview_method() == "none"
    comfy_args.preview_method = LatentPreviewMethod.Latent2RGB
    assert step_preview.preview_method() == "latent2rgb"


def test_outside_comfyui_previews_are_made_as_auto():
    assert step_preview.preview_method() == "auto"


def test_preview_none_gives_no_previewer_and_no_image_per_step(model, sample_inputs, comfy_args, monkeypatch):
    bar = Bar()
    monkeypatch.setattr(sampling_nodes, "progress_bar", lambda total: bar)
    decodes = count_decodes(model, monkeypatch)
    template, mask, product = sample_inputs
    run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask, product_image=product, steps=0,
        seed=0, preserve_background=True)
    assert step_preview.step_previewer(model) is None
    assert [(v, t, p) for v, t, p in bar.calls] == [(1, 2, None), (2, 2, None)]  # progress still reported
    assert len(decodes) == 1  # the one decode of the finished window


# --- latent2rgb -----------------------------------------------------------------------------------

def test_latent2rgb_uses_comfyuis_wan21_factors_on_the_middle_latent_frame():
    factors = torch.tensor(step_preview.WAN21_LATENT_RGB_FACTORS)
    bias = torch.tensor(step_preview.WAN21_LATENT_RGB_BIAS)
    assert factors.shape == (16, 3) and bias.shape == (3,)
    # spot values of comfy/latent_formats.py Wan21.latent_rgb_factors
    assert factors[0].tolist() == pytest.approx([-0.1299, -0.1692, 0.2932])
    assert factors[15].tolist() == pytest.approx([0.1984, 0.0913, 0.1861])
    x0 = torch.zeros(1, 16, 5, 2, 3)
    x0[0, 6, 2, 1, 2] = 1.0  # channel 6, middle latent frame (2 of 5), pixel (1, 2)
    x0[0, 2, 0, 0, 0] = 9.0  # another frame: must not show
    rgb = step_preview.latent_to_rgb(x0)
    assert rgb.shape == (2, 3, 3)
    torch.testing.assert_close(rgb[1, 2], ((factors[6] + bias + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(rgb[0, 0], ((bias + 1) / 2).clamp(0, 1))


def test_pixel_model_preview_is_its_middle_frame_enlarged(comfy_args):
    comfy_args.preview_method = LatentPreviewMethod.Auto
    x0 = torch.full((1, 3, 9, 16, 16), -1.0)
    x0[0, 0, 4] = 1.0  # middle frame red
    loaded = types.SimpleNamespace(model=types.SimpleNamespace(arch="wan_concat"))
    kind, image, size = step_preview.step_previewer(loaded)(x0)
    assert kind == "JPEG" and image.size == (256, 256) and size == 256
    assert image.getpixel((10, 10)) == (255, 0, 0)


def test_latent_model_preview_is_latent2rgb(comfy_args):
    comfy_args.preview_method = LatentPreviewMethod.TAESD  # ComfyUI has no TAESD for Wan 2.1: latent2rgb
    loaded = types.SimpleNamespace(model=types.SimpleNamespace(arch="wan_vace"))
    kind, image, _ = step_preview.step_previewer(loaded)(torch.zeros(1, 16, 3, 60, 104))
    bias = ((torch.tensor(step_preview.WAN21_LATENT_RGB_BIAS) + 1) / 2 * 255).round().int().tolist()
    assert image.size == (208, 120)  # 104x60 latent, enlarged 2x
    assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((5, 5)), bias))  # JPEG-free: PIL keeps pixels


# --- no decode per step ---------------------------------------------------------------------------

def test_pixel_model_decodes_once_per_window_not_per_step(model, sample_inputs, monkeypatch):
    bar = Bar()
    monkeypatch.setattr(sampling_nodes, "progress_bar", lambda total: bar)
    decodes = count_decodes(model, monkeypatch)
    template, mask, product = sample_inputs
    run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask, product_image=product, steps=0,
        seed=0, preserve_background=True)
    assert len(bar.calls) == 2 and all(p[0] == "JPEG" for _, _, p in bar.calls)  # a preview at each step
    assert len(decodes) == 1  # 2 steps, 1 window: before this change, 3 (one per step and one at the end)


@pytest.fixture(scope="module")
def vace(tmp_path_factory):
    loading = importlib.import_module(f"{PACKAGE}.pvtt_train.models.loading")
    return loading.load_model(make_wan_vace_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-VACE-tiny-diffusers"))


def test_wan_vace_steps_preview_without_the_vae(vace, monkeypatch):
    """The fixture's VAE has 4 latent channels; the factors are patched to 4x3 so the latent path runs."""
    monkeypatch.setattr(step_preview, "WAN21_LATENT_RGB_FACTORS", step_preview.WAN21_LATENT_RGB_FACTORS[:4])
    bar = Bar()
    monkeypatch.setattr(sampling_nodes, "progress_bar", lambda total: bar)
    decodes = count_decodes(vace, monkeypatch)
    vae_calls, vae_decode = [], vace.model.vae.decode
    monkeypatch.setattr(vace.model.vae, "decode", lambda *a, **k: vae_calls.append(1) or vae_decode(*a, **k))
    template, mask, reference = designer_inputs()
    out = outputs(run("PVTTTemplateTransfer", model=vace, template_video=template, mask=mask,
                      product_image=reference[None], steps=2, seed=0, preserve_background=True, photo_detail=False))
    assert out[0].shape == template.shape
    assert [(v, t) for v, t, _ in bar.calls] == [(1, 2), (2, 2)]
    assert all(p is not None and p[0] == "JPEG" for _, _, p in bar.calls)
    assert len(decodes) == 1 and len(vae_calls) == 1  # the final decode only, none per step


def test_unknown_latent_channels_give_no_preview_rather_than_a_wrong_one(comfy_args):
    comfy_args.preview_method = LatentPreviewMethod.Latent2RGB
    loaded = types.SimpleNamespace(model=types.SimpleNamespace(arch="wan_vace"))
    assert step_preview.step_previewer(loaded)(torch.zeros(1, 4, 3, 8, 8)) is None
