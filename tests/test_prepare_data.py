"""prepare-data on a tiny real-layout Wan-VACE folder: what is stored, resumability, bad clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _clip_fixtures import add_text_encoder, make_clips
from _wan_fixtures import make_wan_vace_folder
from safetensors.torch import load_file

from pvtt_train.__main__ import main
from pvtt_train.data.clips import ClipError, discover_clips, read_clip
from pvtt_train.data.dataset import DatasetStream, EncodedDataset
from pvtt_train.data.prepare import prepare_dataset
from pvtt_train.data.prepare_cli import folder_text_encoder
from pvtt_train.models.loading import load_model


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return add_text_encoder(make_wan_vace_folder(tmp_path_factory.mktemp("wan") / "wan_vace"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("clips") / "clips")


@pytest.fixture(scope="module")
def prepared(wan, clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dataset"
    assert main(["prepare-data", "--clips", str(clips), "--out", str(out), "--model", str(wan), "--heldout", "2",
                 "--shard-clips", "2", "--negative-prompt", "blurry bad"]) == 0
    return out


def test_cli_writes_every_usable_clip_and_lists_the_bad_one(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["complete"]
    names = [e["name"] for e in manifest["examples"]]
    # The 18-frame self-supervised clip gives two 9-frame windows; the clip without a mask is skipped.
    assert sorted(names) == ["a_paired", "b_paired_truth", "c_selfsup_long#0", "c_selfsup_long#1", "d_selfsup"]
    assert manifest["errors"] == [{"clip": "e_broken", "error": manifest["errors"][0]["error"]}]
    assert "no mask" in manifest["errors"][0]["error"]
    assert sum(e["split"] == "heldout" for e in manifest["examples"]) >= 2
    # Two usable clips per shard: 4 usable clips -> 2 shards (+ the trailing broken clip's record).
    assert [s["file"] for s in manifest["shards"]][:2] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert {e["clip"] for e in manifest["examples"] if e["ground_truth"]} == {"b_paired_truth", "c_selfsup_long",
                                                                                "d_selfsup"}


def test_stored_encodings_are_the_models_own(prepared, wan):
    """Each stored Condition and ground-truth latent equals what the frozen model computes from the
    stored pixels; prompt embeddings equal the text encoder's and differ between prompts."""
    loaded = load_model(wan)
    data = EncodedDataset(prepared)
    encode_text = folder_text_encoder(wan)
    batch = data.load(range(len(data.examples)))
    cond = loaded.model.condition(batch["template"], batch["mask"], batch["reference"])
    torch.testing.assert_close(batch["background"], cond.background, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(batch["features"], cond.features, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(batch["region"], cond.region)
    assert data.reference_slice == cond.reference_slice
    prompts = [e["prompt"] for e in data.examples]
    torch.testing.assert_close(batch["prompt_embeds"], encode_text(prompts), atol=1e-5, rtol=1e-4)
    first, second = (prompts.index(p) for p in ("a blue shoe on a table", "a blue bottle"))
    assert not torch.allclose(batch["prompt_embeds"][first], batch["prompt_embeds"][second])
    torch.testing.assert_close(data.negative_prompt_embeds(), encode_text(["blurry bad"])[0], atol=1e-5, rtol=1e-4)
    truth = [i for i, e in enumerate(data.examples) if e["ground_truth"]]
    for i in truth:
        shard = load_file(str(prepared / data.examples[i]["shard"]))
        stored = shard[f"{data.examples[i]['index']}.target_latent"]
        if data.examples[i]["split"] == "heldout":  # held-out clips keep their ground-truth pixels
            pixels = shard[f"{data.examples[i]['index']}.target"].float()[None] / 255
            torch.testing.assert_close(stored, loaded.model.encode(pixels)[0], atol=2e-5, rtol=1e-4)
    # A self-supervised clip is its own ground truth.
    selfsup = next(i for i, e in enumerate(data.examples) if e["self_supervised"])
    torch.testing.assert_close(data.load([selfsup])["target_latent"], batch["background"][selfsup:selfsup + 1])


def test_self_supervised_reference_is_the_product_cut_from_another_frame(clips):
    source = next(s for s in discover_clips(clips) if s.name == "c_selfsup_long")
    windows = read_clip(source, 9, 32, 32, seed=0)
    assert len(windows) == 2
    ref = windows[0].reference
    # Matted on white: the corners are the backdrop; the product (red box) is inside.
    assert ref[0, 0].min() > 0.99 and ref[-1, -1].min() > 0.99
    centre = ref[ref.shape[0] // 2, ref.shape[1] // 2]
    assert centre[0] > 0.6 and centre[1] < 0.4
    # Seeded: the same seed gives the same augmentation, another seed another one.
    np.testing.assert_array_equal(read_clip(source, 9, 32, 32, seed=0)[0].reference, ref)
    other = read_clip(source, 9, 32, 32, seed=1)[0].reference
    assert other.shape != ref.shape or not np.array_equal(other, ref)


def test_clip_errors_name_the_clip_and_the_problem(clips, tmp_path):
    broken = next(s for s in discover_clips(clips) if s.name == "e_broken")
    with pytest.raises(ClipError, match="clip 'e_broken': no mask"):
        read_clip(broken, 9, 32, 32)
    short = next(s for s in discover_clips(clips) if s.name == "a_paired")
    with pytest.raises(ClipError, match="has 9 frames; the model's clip is 17 frames"):
        read_clip(short, 17, 32, 32)


def test_on_error_stop_ends_with_the_clip_and_keeps_finished_shards(wan, tmp_path, capsys):
    clips = make_clips(tmp_path / "clips", ("a_paired", "e_broken"))
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as exc:
        main(["prepare-data", "--clips", str(clips), "--out", str(out), "--model", str(wan), "--on-error", "stop",
              "--shard-clips", "1", "--heldout", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "clip 'e_broken': no mask" in err and "--on-error skip" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and [s["sources"] for s in manifest["shards"]] == [["a_paired"]]


class Killed(Exception):
    pass


def test_a_kill_loses_at_most_one_shard_and_the_result_is_bit_identical(wan, tmp_path):
    clips = make_clips(tmp_path / "clips", ("a_paired", "d_selfsup", "e_broken"))
    loaded = load_model(wan)
    encode_text = folder_text_encoder(wan)
    clean = tmp_path / "clean"
    prepare_dataset(clips, clean, loaded, encode_text, heldout=1, shard_clips=1, progress=False, say=lambda _: None)

    calls = {"n": 0}

    def dies_on_the_second_clip(prompts):
        calls["n"] += 1
        if calls["n"] == 3:  # 1: the negative prompt, 2: the first clip (its shard), 3: killed mid-shard
            raise Killed
        return encode_text(prompts)

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        prepare_dataset(clips, out, loaded, dies_on_the_second_clip, heldout=1, shard_clips=1, progress=False,
                        say=lambda _: None)
    first = out / "shard-00000.safetensors"
    stamp = first.stat().st_mtime_ns
    said = []
    prepare_dataset(clips, out, loaded, encode_text, heldout=1, shard_clips=1, progress=False, say=said.append)
    assert said[0] == "resuming: 1 shard(s) with 1 clip(s) kept, 2 clip(s) to encode"
    assert said[1].startswith("skipped clip 'e_broken': no mask")
    assert first.stat().st_mtime_ns == stamp  # kept, not re-encoded
    files = sorted(p.name for p in clean.iterdir())
    assert files == sorted(p.name for p in out.iterdir())
    for name in files:
        assert (clean / name).read_bytes() == (out / name).read_bytes(), name


def test_stream_is_deterministic_and_resumable(prepared):
    data = EncodedDataset(prepared)
    a = DatasetStream(data, 2, seed=5)
    seen = [a.next()["seed"].tolist() for _ in range(4)]
    b = DatasetStream(data, 2, seed=5, position=4)
    assert [b.next()["seed"].tolist() for _ in range(2)] == seen[2:]
    flat = [i for s in seen for i in s]
    assert set(flat) <= set(data.train) and set(flat[:len(data.train)]) == set(data.train)  # an epoch covers all


def test_other_settings_or_foreign_folders_are_refused(wan, clips, prepared, tmp_path):
    loaded = load_model(wan)
    with pytest.raises(ValueError, match="prepared from other clips, model or settings"):
        prepare_dataset(clips, prepared, loaded, None, heldout=2, shard_clips=2, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no manifest.json"):
        prepare_dataset(clips, foreign, loaded, None, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
