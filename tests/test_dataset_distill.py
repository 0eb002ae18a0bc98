"""distill --data DATASET on a tiny Wan-VACE teacher: trains on the stored encodings, gates and reports on
the dataset's held-out clips, and records the dataset in the students' provenance."""

from __future__ import annotations

import json

import pytest
from _clip_fixtures import add_text_encoder, make_clips
from _wan_fixtures import CLIP, make_wan_vace_folder

from pvtt_train.__main__ import main
from pvtt_train.data.dataset import EncodedDataset
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.models.loading import export_single_file, load_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dd")
    wan = add_text_encoder(make_wan_vace_folder(root / "wan_vace"))
    # A 4-step teacher sampler keeps the gates and the trajectory cache quick on CPU.
    (wan / "pvtt.json").write_text(json.dumps({"video": CLIP, "sampler": {"kind": "euler_cfg", "steps": 4,
                                                                          "cfg": 2.0}}))
    clips = make_clips(root / "clips", ("a_paired", "b_paired_truth", "d_selfsup"))
    dataset = root / "dataset"
    assert main(["prepare-data", "--clips", str(clips), "--out", str(dataset), "--model", str(wan),
                 "--heldout", "2"]) == 0
    # The README's production form: the diffusers folder itself is the teacher.
    return root, wan, dataset


def test_distill_on_a_dataset_exports_students_that_record_it(setup):
    root, teacher, dataset = setup
    models, run = root / "models", root / "run"
    assert main(["distill", "--teacher", str(teacher), "--data", str(dataset), "--path", "2,1",
                 "--generator-steps", "2", "--critic-ratio", "1", "--batch-size", "1", "--eval-clips", "2",
                 "--regression-pool", "1", "--report-clips", "2", "--models-dir", str(models), "--run-dir", str(run),
                 "--force"]) == 0
    data = EncodedDataset(dataset)
    base = load_model(teacher)
    for steps in (2, 1):
        student = load_checkpoint(models / f"pvtt_student_{steps}step.safetensors")
        provenance = student.metadata["provenance"]
        assert provenance["data"]["kind"] == "dataset" and provenance["data"]["sha256"] == data.sha256
        assert provenance["data"]["train_examples"] == 1 and provenance["data"]["heldout_examples"] == 2
        scores = student.metadata["gate"]["scores"]
        assert scores["frechet_distance"] >= 0 and "frechet_to_teacher" in scores and "background_psnr_raw" in scores
        changed = [k for k, v in student.model.state_dict().items()
                   if k.startswith("transformer.") and not v.equal(base.model.state_dict()[k])]
        assert changed  # the student was trained
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["sha256"] == data.sha256 and report["clips"] == 2
    progress = json.loads((run / "progress.json").read_text())
    assert progress["signature"]["data_sha256"] == data.sha256


def test_a_dataset_from_another_vae_is_refused(setup, tmp_path, capsys):
    root, _, dataset = setup
    other = export_single_file(load_model(make_wan_vace_folder(tmp_path / "other", seed=1)),
                               tmp_path / "other.safetensors")
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", str(other), "--data", str(dataset), "--path", "2,1", "--generator-steps", "1",
              "--models-dir", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "was encoded with another model" in capsys.readouterr().err


def test_losses_that_need_ground_truth_are_refused_before_the_run_when_a_training_clip_has_none(setup, tmp_path,
                                                                                                capsys):
    root, teacher, _ = setup
    clips = make_clips(tmp_path / "clips", ("a_paired", "b_paired_truth"))
    dataset = tmp_path / "dataset"
    assert main(["prepare-data", "--clips", str(clips), "--out", str(dataset), "--model", str(teacher),
                 "--heldout", "0"]) == 0
    for flags, named in ((["--weight", "truth=1"], "--weight truth need"), (["--adversarial"], "--adversarial need")):
        with pytest.raises(SystemExit) as exc:
            main(["distill", "--teacher", str(teacher), "--data", str(dataset), "--path", "1", "--generator-steps",
                  "1", "--models-dir", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"), *flags])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert named in err and "1 have none (a_paired)" in err and "add their target.mp4" in err
        assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()
    # The library entry point refuses it too, before it makes the run or models folder.
    from pvtt_train.distill.config import DEFAULT_WEIGHTS, RunConfig, build_stages
    from pvtt_train.distill.progressive import run_progressive
    from pvtt_train.errors import InputError

    stages = build_stages((1,), generator_steps=1, weights={**DEFAULT_WEIGHTS, "truth": (1.0, 0)})
    with pytest.raises(InputError, match=r"--weight truth need ground truth .* 1 have none \(a_paired\)"):
        run_progressive(teacher, stages, RunConfig(), tmp_path / "r", tmp_path / "m", data=dataset)
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()
