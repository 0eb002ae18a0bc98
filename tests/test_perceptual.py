"""Perceptual loss: offline backbone selection, zero on identical clips, grows with noise, differentiable."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from pvtt_train.distill import perceptual
from pvtt_train.distill.perceptual import FALLBACK_KIND, LPIPS_KIND, PerceptualLoss, select_kind


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache without any weights (whatever the machine's real cache holds)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


ALEXNET_CONVS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}


def clip(seed=0, shape=(2, 3, 3, 16, 16)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def noisy(x, std, seed=1):
    return x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def test_falls_back_without_weights(empty_hub):
    assert PerceptualLoss().kind == FALLBACK_KIND


@pytest.mark.parametrize("importable, on_disk", list(itertools.product([False, True], repeat=2)))
def test_lpips_is_selected_only_with_package_and_weights(tmp_path, monkeypatch, importable, on_disk):
    # Control flow only: both checks are stubbed, nothing is imported or constructed.
    weights = tmp_path / "alexnet.pth"
    if on_disk:
        weights.write_bytes(b"")
    monkeypatch.setattr(perceptual, "alexnet_weights_path", lambda: weights)
    monkeypatch.setattr(perceptual, "_lpips_importable", lambda: importable)
    assert select_kind() == (LPIPS_KIND if importable and on_disk else FALLBACK_KIND)


@pytest.mark.parametrize("encode", [None, lambda v: F.avg_pool3d(v, (1, 2, 2))], ids=["pixels", "encoded"])
def test_fallback_distance(empty_hub, encode):
    loss = PerceptualLoss(encode)
    x = clip()
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    values = [loss(noisy(x, std), x).item() for std in (0.05, 0.2, 0.5, 1.0)]
    assert values == sorted(values) and values[0] > 1e-3
    x_grad = noisy(x, 0.1).requires_grad_(True)
    loss(x_grad, x).backward()
    assert x_grad.grad is not None and x_grad.grad.abs().sum() > 0


def test_lpips_path_reads_the_cached_file_and_never_downloads(empty_hub, monkeypatch):
    """A random AlexNet file stands in for the real weights (no weights are ever fetched here)."""
    pytest.importorskip("lpips")
    path = empty_hub / "checkpoints" / perceptual.ALEXNET_WEIGHTS
    path.parent.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    alexnet = {}  # torchvision's AlexNet feature layers (the classifier is not needed)
    for i, shape in ALEXNET_CONVS.items():
        alexnet[f"features.{i}.weight"] = 0.05 * torch.randn(shape, generator=g)
        alexnet[f"features.{i}.bias"] = torch.zeros(shape[0])
    torch.save(alexnet, path)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    loss = PerceptualLoss()
    assert loss.kind == LPIPS_KIND
    assert torch.equal(loss.lpips.net.slice1.get_submodule("0").weight, alexnet["features.0.weight"])
    assert torch.equal(loss.lpips.net.slice5.get_submodule("10").weight, alexnet["features.10.weight"])
    x = clip()  # 16 px frames: upsampled to what AlexNet can take
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    x_grad = noisy(x, 0.3).requires_grad_(True)
    value = loss(x_grad, x)
    value.backward()
    assert value.item() > 0 and x_grad.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
