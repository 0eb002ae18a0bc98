"""The shipped 4-step student, run for real through Background Preserve: the background stays exact."""

import math

import pytest
import torch
from _comfy_pack import ROOT
from _node_fixtures import run

from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.models.loading import load_model
from pvtt_train.pipeline import transfer
from pvtt_train.sampling.composite import composite

STUDENT = ROOT / "models_shipped" / "pvtt_student_4step.safetensors"


@pytest.fixture(scope="module")
def student():
    return load_model(STUDENT, "cpu")


def clip(seed, size=16, frames=33):
    config = SyntheticConfig(frames=frames, height=size, width=size, product_size=(5 * size / 16, 7.5 * size / 16))
    ex = SyntheticVideoGenerator(config).example(seed)
    return tuple(torch.from_numpy(a) for a in (ex.template, ex.mask, ex.reference))


def psnr_outside(video, template, mask):
    outside = (mask <= 0.5)[..., None].expand_as(video)
    mse = float(((video - template)[outside] ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def test_background_preserve_keeps_the_template_exactly_outside_the_mask(student):
    template, mask, reference = clip(0, size=64, frames=9)
    generated = transfer(student, template, mask, reference, seed=0)
    # The saved workflows' widget values (2, 2.0) and the node's defaults (2, 1.0).
    for dilate_px, feather_px in ((2, 2.0), (2, 1.0)):
        video, soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                          dilate_px=dilate_px, feather_px=feather_px)
        outside = (mask <= 0.5)
        assert torch.equal(video[outside], template[outside]) and (soft[outside] == 0).all()
        assert psnr_outside(video, template, mask) >= 50
        assert (soft[mask > 0.5] > 0).any() and soft.max() == 1.0
    old = composite(generated, template, mask, 2, 2.0)  # the old grow-and-feather, for contrast
    assert psnr_outside(old, template, mask) < 50
