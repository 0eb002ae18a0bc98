"""The shipped 4-step student, run for real through Background Preserve: the background stays exact."""

import math

import pytest
import torch
from _comfy_pack import ROOT
from _node_fixtures import run

from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.models.loading import load_model
from pvtt_train.pipeline import transfer
from pvtt_train.sampling.composite import grow_mask

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
    # The node's defaults and the shipped workflows' values (0, 0.0): exactly the mask.
    video, soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                      dilate_px=0, feather_px=0.0)
    outside, inside = mask <= 0.02, mask >= 0.5
    assert torch.equal(video[outside], template[outside]) and (soft[outside] == 0).all()
    assert psnr_outside(video, template, mask) >= 50
    assert torch.equal(video[inside], generated[inside]) and (soft[inside] == 1).all()  # no rim of the old product
    # Grown by 2 px with a 1 px feather: the template outside the grown mask, still bit for bit.
    video, soft = run("PVTTBackgroundPreserve", generated=generated, template_video=template, mask=mask,
                      dilate_px=2, feather_px=1.0)
    beyond = grow_mask((mask > 0.02).float(), 2) == 0
    assert torch.equal(video[beyond], template[beyond]) and (soft[beyond] == 0).all()
    assert torch.equal(video[inside], generated[inside])
