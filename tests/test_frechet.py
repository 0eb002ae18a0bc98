"""Fréchet distance, the shipped video encoder, the I3D port and the fvd CLI (CPU, no downloads)."""

import argparse
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pvtt_train.data.batches import HELDOUT_SEED_BASE
from pvtt_train.data.export import export_examples
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.errors import CheckpointError, InputError
from pvtt_train.eval.frechet import FrechetScorer, frechet_distance
from pvtt_train.eval.frechet_cli import load_video_folder, register
from pvtt_train.eval.i3d import I3DFeatures, InceptionI3d, load_i3d
from pvtt_train.eval.video_encoder import SHIPPED_VIDEO_ENCODER, VideoEncoder, load_video_encoder, save_video_encoder
from pvtt_train.eval.video_encoder_train import blur, clip_parameters, flat_colour
from pvtt_train.paths import SHIPPED_TEACHER


def exact_samples(mean, cov, n=50, seed=0):
    """n samples whose sample mean and (N-1) covariance are exactly ``mean`` and ``cov``."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def test_fd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(64, 32)) * 3 + 1
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_the_closed_form_for_known_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    cov_a, cov_b = np.array([[2.0, 0.6], [0.6, 1.0]]), np.array([[1.0, -0.4], [-0.4, 0.5]])
    # For 2x2 PSD M: tr(sqrt(M)) = sqrt(tr(M) + 2 sqrt(det(M))), with M ~ cov_a cov_b.
    trace_root = np.sqrt(np.trace(cov_a @ cov_b) + 2 * np.sqrt(np.linalg.det(cov_a) * np.linalg.det(cov_b)))
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    a, b = exact_samples(mu_a, cov_a), exact_samples(mu_b, cov_b, n=80, seed=1)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(expected, rel=1e-9)
    # Commuting (diagonal) covariances: FD = |dmu|^2 + sum (sqrt(var_a) - sqrt(var_b))^2.
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    a, b = exact_samples(np.zeros(3), np.diag(va)), exact_samples(np.ones(3), np.diag(vb), seed=2)
    assert frechet_distance(a, b) == pytest.approx(3 + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2), rel=1e-9)


def test_fd_grows_with_the_mean_shift():
    x = np.random.default_rng(2).normal(size=(64, 8))
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    fds = [frechet_distance(x, x + s) for s in shifts]
    assert fds == sorted(fds) and fds[-1] > 0
    assert fds == pytest.approx([8 * s * s for s in shifts], abs=1e-8)  # same covariance: only |dmu|^2 remains


def test_fd_rejects_unusable_features():
    with pytest.raises(InputError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(InputError, match="dimensions differ"):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(InputError, match="NaN"):
        frechet_distance(np.full((5, 4), np.nan), np.zeros((5, 4)))


@pytest.fixture(scope="module")
def heldout():
    gen = SyntheticVideoGenerator(SyntheticConfig())
    return {name: torch.from_numpy(gen.batch(range(HELDOUT_SEED_BASE + lo, HELDOUT_SEED_BASE + lo + 64))["target"])
            for name, lo in (("reference", 0), ("other", 64))}


@pytest.fixture(scope="module")
def shipped():
    return load_video_encoder()


def test_shipped_encoder_loads_frozen_and_deterministic(shipped, heldout):
    assert isinstance(shipped, VideoEncoder) and shipped.feature_dim == 32 and not shipped.training
    assert not any(p.requires_grad for p in shipped.parameters())
    assert shipped.report["steps"] > 0 and "sanity_fd" in shipped.report
    clips = heldout["other"][:8]
    a, b = shipped.features(clips), shipped.features(clips.clone())
    assert a.shape == (8, 32) and torch.equal(a, b)
    # A clip's features do not depend on the rest of its batch (frozen batch norms).
    assert torch.allclose(shipped.features(clips[:1])[0], a[0], atol=1e-5)
    # uint8 input is scaled like the float clip it came from.
    as_uint8 = (clips * 255).round().to(torch.uint8)
    assert torch.allclose(shipped.features(as_uint8), a, atol=0.05)


def test_shipped_encoder_ranks_degraded_ground_truth_farther(shipped, heldout):
    scorer = FrechetScorer(shipped)
    ref, other = heldout["reference"], heldout["other"]
    clean = scorer.distance(other, ref)
    blurred = scorer.distance(blur(other, torch.full((len(other),), 1.0)), ref)
    flat = scorer.distance(flat_colour(other), ref)
    assert 0 < clean and blurred > 10 * clean and flat > 10 * clean
    assert scorer.distance(other, ref) == clean  # deterministic


def test_scorer_encodes_each_batch_once():
    calls = []

    class Counting(torch.nn.Module):
        feature_dim = 2

        def features(self, videos):
            calls.append(len(videos))
            return videos.mean(dim=(1, 2, 3))[:, :2]

    scorer = FrechetScorer(Counting(), cache_size=2)
    x = torch.rand(6, 2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    ref = torch.rand(6, 2, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    first = scorer.distance(x, ref)
    assert scorer.distance(x.clone(), ref) == first and calls == [6, 6]
    scorer.features(ref, batch=4)  # cached: no new call, whatever the batch size
    assert calls == [6, 6]
    x[0] += 0.5  # edited in place: new content, new features
    assert scorer.distance(x, ref) != first and calls == [6, 6, 6]
    scorer.features(torch.rand(3, 2, 8, 8, 3), batch=2)  # evicts the oldest entry, in batches of 2
    assert calls[-2:] == [2, 1]


def test_encoder_save_load_round_trip_and_bad_input(tmp_path):
    torch.manual_seed(0)
    enc = VideoEncoder(dim=8, channels=(4, 4, 4, 4)).eval()
    path = save_video_encoder(tmp_path / "enc.safetensors", enc, {"note": "test"})
    loaded = load_video_encoder(path)
    clips = torch.rand(3, 5, 12, 10, 3)
    assert loaded.report == {"note": "test"} and torch.equal(loaded.features(clips), enc.features(clips))
    with pytest.raises(InputError, match=r"\[B, F, H, W, 3\]"):
        loaded.features(torch.rand(3, 5, 3, 12, 12))
    with pytest.raises(InputError, match="at least 2 frames of 8x8"):
        loaded.features(torch.rand(3, 1, 12, 12, 3))
    with pytest.raises(InputError, match="save the video encoder as a .safetensors"):
        save_video_encoder(tmp_path / "enc.pt", enc, {})


def test_i3d_of_small_width_loads_from_safetensors(tmp_path):
    torch.manual_seed(0)
    net = InceptionI3d(width=1 / 8).eval()
    path = tmp_path / "i3d_small.safetensors"
    save_file(net.state_dict(), str(path))
    feats = load_video_encoder(path)
    assert isinstance(feats, I3DFeatures) and feats.feature_dim == 400
    clips = torch.rand(2, 9, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    out = feats.features(clips)
    assert out.shape == (2, 400) and torch.isfinite(out).all()
    assert torch.allclose(out[:1], I3DFeatures(net).features(clips[:1]), atol=1e-5)
    pooled = load_i3d(path, size=112, output="pool")
    assert pooled.feature_dim == 128 and pooled.features(clips[:, :4]).shape == (2, 128)  # 4 frames: padded to 9
    # Real key names of piergiaj/pytorch-i3d.
    keys = net.state_dict().keys()
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b0.conv3d.weight", "Mixed_5c.b3b.bn.running_mean",
            "logits.conv3d.weight", "logits.conv3d.bias"} <= set(keys)


def test_i3d_with_wrong_keys_is_refused_with_the_names(tmp_path):
    state = InceptionI3d(width=1 / 8).state_dict()
    state["Mixed_3b.b0.conv.weight"] = state.pop("Mixed_3b.b0.conv3d.weight")
    path = tmp_path / "bad_i3d.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="Mixed_3b.b0.conv3d.weight") as err:
        load_video_encoder(path)
    assert "Mixed_3b.b0.conv.weight" in str(err.value) and "pytorch-i3d" in str(err.value)


def test_pickles_and_foreign_files_are_refused_unopened(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    for suffix in (".pt", ".pth", ".bin", ".ckpt"):
        path = tmp_path / f"i3d{suffix}"
        path.write_bytes(pickle.dumps(Payload()))
        with pytest.raises(CheckpointError, match="weights_only=True") as err:
            load_video_encoder(path)
        assert "safetensors.torch.save_file" in str(err.value)
        assert not marker.exists()
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="neither a PVTT video encoder"):
        load_video_encoder(other)
    with pytest.raises(CheckpointError, match="diffusion checkpoint, not a video encoder"):
        load_video_encoder(SHIPPED_TEACHER)
    with pytest.raises(CheckpointError, match="not found"):
        load_video_encoder(tmp_path / "missing.safetensors")


def test_clip_parameters_repeat_the_generators_draws():
    cfg = SyntheticConfig()
    gen = SyntheticVideoGenerator(cfg)
    for seed in (0, 7, HELDOUT_SEED_BASE + 3):
        params = clip_parameters(cfg, seed)
        assert params["backdrop"] == pytest.approx(float(gen.example(seed).reference[0, 0, 0]), abs=1e-6)


def test_fvd_cli_on_exported_examples(tmp_path, capsys):
    export_examples(tmp_path / "data", seeds=range(3))
    targets = load_video_folder(tmp_path / "data")  # target.mp4 of each example
    templates = load_video_folder(tmp_path / "data", clip="template")  # lossless template/ PNG frames
    assert targets.shape == templates.shape == (3, 9, 16, 16, 3) and targets.dtype == np.uint8
    gen = SyntheticVideoGenerator(SyntheticConfig())
    assert np.array_equal(templates[1], np.clip(np.rint(gen.example(1).template * 255), 0, 255).astype(np.uint8))
    with pytest.raises(InputError, match="no videos"):
        load_video_folder(tmp_path)  # holds only the data folder, which has no example.json itself
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fvd", "--videos-dir", str(tmp_path / "data"), "--reference-dir",
                              str(tmp_path / "data"), "--encoder", str(SHIPPED_VIDEO_ENCODER)])
    args.func(args)
    result = json.loads(capsys.readouterr().out)
    assert result["fvd"] == pytest.approx(0.0, abs=1e-6) and result["videos"] == 3 and result["feature_dim"] == 32
