"""teacher-eval --calibrate-cfg never rewrites the teacher it was given (it may be the shipped
teacher or a user's only copy): the calibrated sampler goes into a new checkpoint in --out."""

from __future__ import annotations

import json

from _tiny import micro_teacher

from pvtt_train.__main__ import CALIBRATED_TEACHER, main
from pvtt_train.models.checkpoint import file_sha256, load_checkpoint


def test_calibrate_cfg_writes_a_calibrated_copy_and_leaves_the_teacher_unchanged(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=2, cfg=1.5)
    before = file_sha256(teacher, length=64)
    out = tmp_path / "eval"
    assert main(["--threads", "1", "teacher-eval", "--teacher", str(teacher), "--out", str(out), "--clips", "2",
                 "--cfg", "1", "1.25", "2", "--calibrate-cfg"]) == 0
    assert file_sha256(teacher, length=64) == before
    calibrated = load_checkpoint(out / CALIBRATED_TEACHER)
    assert calibrated.sampler["cfg"] in (1.25, 2.0)
    original = load_checkpoint(teacher)
    assert original.sampler["cfg"] == 1.5
    assert all(v.equal(original.model.state_dict()[k]) for k, v in calibrated.model.state_dict().items())
    assert {"cfg_1", "cfg_1.25", "cfg_2"} <= set(json.loads((out / "teacher_bar.json").read_text()))
