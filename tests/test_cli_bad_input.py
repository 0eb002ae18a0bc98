"""Every ``python -m pvtt_train`` command answers bad input with one clear line and exit code 2.

Each case of the matrix is (argv, substrings that name the problem, substrings that name the fix).
It runs in a fresh, empty working folder (the relative defaults such as ``runs/distill`` land there)
and must leave that folder exactly as it found it: no half-written output after a refusal. Most
cases run in-process through ``main``; a few run ``python -m pvtt_train`` end to end.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pvtt_train.__main__ import build_parser, main
from pvtt_train.errors import InputError
from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
from tests._tiny import micro_encoders, micro_teacher

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m pvtt_train"


class _MakesADirWhenUnpickled:
    """A pickle payload that proves, by the folder it would create, whether anything unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, outside the working folder the cases run in."""
    root = tmp_path_factory.mktemp("inputs")
    teacher = micro_teacher(root / "teacher.safetensors")
    loaded = load_checkpoint(teacher)
    save_checkpoint(root / "student.safetensors", loaded.model,
                    {**loaded.metadata, "stage": "student_4step",
                     "sampler": {"kind": "few_step", "steps": 4, "timesteps": [1000, 750, 500, 250]}})
    save_checkpoint(root / "teacher_no_data.safetensors", loaded.model,  # trained on no synthetic clips it records
                    {**loaded.metadata, "provenance": {"trainer": "tests"}})
    micro_encoders(root)  # identity.safetensors, video.safetensors
    data = teacher.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "garbage.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    save_file({"weight": torch.zeros(2, 2)}, str(root / "plain.safetensors"))  # no PVTT metadata at all
    marker = root / "unpickled"
    for name in ("model.pt", "encoder.ckpt", "weights.bin", "video.pth"):
        (root / name).write_bytes(pickle.dumps(_MakesADirWhenUnpickled(marker)))
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "folder").mkdir()
    for out in ("user_out", "user_run"):  # a user's folders in the way of a run: never deleted
        run = root / out / "run" if out == "user_out" else root / out
        run.mkdir(parents=True)
        (run / "thesis.tex").write_text("\\chapter{One}")
    user_models = root / "user_models"  # a user's copy of a teacher under a student's name: never replaced
    user_models.mkdir()
    (user_models / "pvtt_student_4step.safetensors").write_bytes(teacher.read_bytes())
    (root / "empty_videos").mkdir()
    (root / "broken_videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (root / "broken_videos" / name).write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    mixed = root / "mixed_sizes" / "clip"
    mixed.mkdir(parents=True)
    import cv2
    import numpy as np

    cv2.imwrite(str(mixed / "0000.png"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(mixed / "0001.png"), np.zeros((8, 16, 3), np.uint8))
    example = root / "examples" / "00000000"
    example.mkdir(parents=True)
    (example / "example.json").write_text(json.dumps({"files": {"target": "target.mp4"}}))
    paths = {p.stem if p.suffix == ".safetensors" else p.name: p for p in root.iterdir()}
    return {**paths, "root": root, "marker": marker, "examples": root / "examples",
            "mixed_sizes": root / "mixed_sizes"}


@pytest.fixture()
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder as cwd, with the debug switch off and torch's thread count restored after."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PVTT_DEBUG", raising=False)
    threads = torch.get_num_threads()
    yield folder
    torch.set_num_threads(threads)


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def error_line(stderr: str, command: str | None) -> str:
    """The one ``<prog> <command>: error: ...`` line (argparse prints its usage above it)."""
    prefix = f"{PROG} {command}: error: " if command else f"{PROG}: error: "
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r} in:\n{stderr}"
    return lines[0]


# (id, argv with {placeholders} from `files` and {work}, problem substrings, fix substrings)
CASES = [
    # --- the program itself
    ("threads-zero", ["--threads", "0", "data", "--out", "{work}/d"], ["--threads", "'0'"], [">= 1"]),
    # --- data
    ("data-count-zero", ["data", "--out", "{work}/d", "--count", "0"], ["--count", "'0'", "too small"], [">= 1"]),
    ("data-count-text", ["data", "--out", "{work}/d", "--count", "many"], ["--count", "not a whole number"],
     [">= 1"]),
    ("data-first-seed-negative", ["data", "--out", "{work}/d", "--first-seed", "-1"], ["--first-seed", "'-1'"],
     ["from 0 to"]),
    ("data-frames-one", ["data", "--out", "{work}/d", "--frames", "1"], ["--frames", "'1'"], [">= 2"]),
    ("data-height-odd", ["data", "--out", "{work}/d", "--height", "15"], ["--height", "15 pixels"],
     ["even number >= 10"]),
    ("data-width-small", ["data", "--out", "{work}/d", "--width", "8"], ["--width", "8 pixels", "must fit"],
     ["even number >= 10"]),
    ("data-out-is-file", ["data", "--out", "{a_file.txt}"], ["--out", "a_file.txt", "existing file"],
     ["pass a folder path"]),
    ("data-out-inside-file", ["data", "--out", "{a_file.txt}/sub"], ["a_file.txt is a file", "cannot be created"],
     ["choose a path outside it"]),
    # --- teacher
    ("teacher-out-folder", ["teacher", "--out", "{folder}"], ["--out", "is a folder"], ["ending in .safetensors"]),
    ("teacher-out-pickle-suffix", ["teacher", "--out", "{work}/teacher.pt"], ["does not end in .safetensors"],
     ["teacher.safetensors"]),
    ("teacher-lr-zero", ["teacher", "--out", "{work}/t.safetensors", "--lr", "0"], ["--lr", "'0'", "out of range"],
     ["a number > 0"]),
    ("teacher-lr-nan", ["teacher", "--out", "{work}/t.safetensors", "--lr", "nan"], ["--lr", "not a finite number"],
     ["a number > 0"]),
    ("teacher-minutes-zero", ["teacher", "--out", "{work}/t.safetensors", "--minutes", "0"], ["--minutes", "'0'"],
     ["a number > 0"]),
    ("teacher-batch-zero", ["teacher", "--out", "{work}/t.safetensors", "--batch-size", "0"], ["--batch-size"],
     [">= 1"]),
    ("teacher-cfg-dropout-one", ["teacher", "--out", "{work}/t.safetensors", "--cfg-dropout", "1"],
     ["--cfg-dropout", "'1'"], [">= 0 and < 1"]),
    ("teacher-sample-cfg-below-one", ["teacher", "--out", "{work}/t.safetensors", "--sample-cfg", "0.5"],
     ["--sample-cfg", "'0.5'"], [">= 1", "1 = no guidance"]),
    ("teacher-shapes-unknown", ["teacher", "--out", "{work}/t.safetensors", "--shapes", "ellipse,hexagon"],
     ["--shapes", "'ellipse,hexagon'"], ["square, circle, diamond, rounded, ellipse"]),
    ("teacher-aspect-one-number", ["teacher", "--out", "{work}/t.safetensors", "--aspect", "0.5"],
     ["--aspect", "'0.5' is not a range"], ["e.g. 0.5,0.75"]),
    ("teacher-aspect-reversed", ["teacher", "--out", "{work}/t.safetensors", "--aspect", "0.9,0.6"],
     ["--aspect", "'0.9,0.6'"], ["0.3 <= MIN <= MAX <= 1"]),
    ("teacher-light-slope-two", ["teacher", "--out", "{work}/t.safetensors", "--light-slope", "2"],
     ["--light-slope", "'2'"], []),
    ("teacher-specular-above-one", ["teacher", "--out", "{work}/t.safetensors", "--specular", "1.5"],
     ["--specular", "'1.5'"], ["<= 1"]),
    ("teacher-sheen-one", ["teacher", "--out", "{work}/t.safetensors", "--sheen", "1"], ["--sheen", "'1'"], ["< 1"]),
    ("teacher-grain-half", ["teacher", "--out", "{work}/t.safetensors", "--grain", "0.5"], ["--grain", "'0.5'"],
     ["< 0.5"]),
    ("teacher-specular-scenes-without-specular", ["teacher", "--out", "{work}/t.safetensors", "--specular-scenes",
                                                  "0.5"], ["--specular-scenes 0.5", "--specular is 0"],
     ["add --specular S"]),
    ("teacher-interior-weight-negative", ["teacher", "--out", "{work}/t.safetensors", "--interior-weight", "-1"],
     ["--interior-weight", "'-1'"], []),
    ("teacher-rollout-spacing-zero", ["teacher", "--out", "{work}/t.safetensors", "--rollout-steps", "3",
                                      "--rollout-spacing", "0"], ["--rollout-spacing", "'0'"], []),
    ("teacher-save-every-negative", ["teacher", "--out", "{work}/t.safetensors", "--save-every", "-5"],
     ["--save-every"], [">= 0", "0 = save only at the end"]),
    # --- teacher-eval
    ("teacher-eval-missing", ["teacher-eval", "--teacher", "{work}/nope.safetensors", "--out", "{work}/e"],
     ["--teacher", "nope.safetensors", "not found"], ["pass the path of a teacher checkpoint"]),
    ("teacher-eval-folder", ["teacher-eval", "--teacher", "{folder}", "--out", "{work}/e"], ["is a folder"],
     ["pass a teacher checkpoint"]),
    ("teacher-eval-pickle", ["teacher-eval", "--teacher", "{model.pt}", "--out", "{work}/e"],
     ["--teacher", "model.pt is a pickle-format file"], ["Convert it with safetensors"]),
    ("teacher-eval-student", ["teacher-eval", "--teacher", "{student}", "--out", "{work}/e"],
     ["student.safetensors is a distilled student (student_4step), not a teacher"], ["pass a teacher checkpoint"]),
    ("teacher-eval-identity-encoder", ["teacher-eval", "--teacher", "{identity}", "--out", "{work}/e"],
     ["identity.safetensors is a PVTT identity encoder, not a diffusion model"], ["pass a teacher checkpoint"]),
    ("teacher-eval-cfg-below-one", ["teacher-eval", "--out", "{work}/e", "--cfg", "1", "0.5"], ["--cfg", "'0.5'"],
     [">= 1"]),
    ("teacher-eval-calibrate-unguided", ["teacher-eval", "--teacher", "{teacher}", "--out", "{work}/e",
                                         "--calibrate-cfg", "--cfg", "1"],
     ["--calibrate-cfg", "guided weights (> 1)", "only 1"], ["add some, e.g. --cfg 1 1.25"]),
    ("teacher-eval-clips-zero", ["teacher-eval", "--out", "{work}/e", "--clips", "0"], ["--clips"], [">= 1"]),
    # --- heldout-eval
    ("heldout-eval-clips-zero", ["heldout-eval", "--out", "{work}/h", "--clips", "0"], ["--clips", "'0'"], [">= 1"]),
    ("heldout-eval-missing-model", ["heldout-eval", "--model", "{work}/nope.safetensors", "--out", "{work}/h"],
     ["--model", "nope.safetensors", "not found"], ["pass the path of a PVTT teacher or student checkpoint"]),
    # --- sampler-eval
    ("sampler-eval-student-is-teacher", ["sampler-eval", "--teacher", "{teacher}", "--student", "{teacher}", "--out",
                                         "{work}/s"], ["is a teacher, not a distilled student"],
     ["written by `python -m pvtt_train distill`"]),
    ("sampler-eval-teacher-is-student", ["sampler-eval", "--teacher", "{student}", "--out", "{work}/s"],
     ["student.safetensors is a distilled student (student_4step), not a teacher"], ["pass a teacher checkpoint"]),
    ("sampler-eval-teacher-without-data", ["sampler-eval", "--teacher", "{teacher_no_data}", "--out", "{work}/s"],
     ["teacher_no_data.safetensors records no synthetic training data"], ["written by `python -m pvtt_train teacher`"]),
    ("sampler-eval-clips-one", ["sampler-eval", "--clips", "1", "--out", "{work}/s"], ["--clips", "'1'"], [">= 2"]),
    ("sampler-eval-oracle-one-draw", ["sampler-eval", "--oracle-draws", "1", "--out", "{work}/s"],
     ["--oracle-draws", "1 draw is no mean"], ["use 0 (no oracles) or at least 2"]),
    ("sampler-eval-repeats-zero", ["sampler-eval", "--repeats", "0", "--out", "{work}/s"], ["--repeats", "'0'"],
     ["from 1 to 100"]),
    ("sampler-eval-repeats-endless", ["sampler-eval", "--repeats", "10000000000000000000000", "--out", "{work}/s"],
     ["--repeats", "is too large"], ["from 1 to 100", "each repeat is a whole scoring"]),
    ("sampler-eval-seed-past-the-generator", ["sampler-eval", "--seed", "18446744073709551616", "--out", "{work}/s"],
     ["--seed", "'18446744073709551616' is too large"], ["from 0 to 4294967295"]),
    ("sampler-eval-steps-increasing", ["sampler-eval", "--steps", "4,8", "--out", "{work}/s"], ["--steps", "'4,8'"],
     ["strictly decreasing"]),
    ("sampler-eval-shift-zero", ["sampler-eval", "--shift", "0", "--out", "{work}/s"],
     ["--shift", "'0' is out of range"], ["> 0", "e.g. 5, Wan 2.1's at 720p"]),
    ("sampler-eval-guide-weight-one", ["sampler-eval", "--teacher", "{teacher}", "--guide-model", "{teacher}",
                                       "--guide-weight", "1", "--out", "{work}/s"],
     ["--guide-weight", "'1' is out of range"], ["> 1", "at 1 the guide changes nothing"]),
    ("sampler-eval-guide-weight-without-guide", ["sampler-eval", "--teacher", "{teacher}", "--guide-weight", "2",
                                                 "--out", "{work}/s"],
     ["--guide-weight", "no --guide-model was given"], ["pass the guide", "or drop --guide-weight"]),
    ("sampler-eval-guide-is-the-teacher", ["sampler-eval", "--teacher", "{teacher}", "--guide-model", "{teacher}",
                                           "--out", "{work}/s"],
     ["--guide-model", "is the teacher itself, so autoguidance would change nothing"],
     ["pass a weaker copy: the teacher's command with a lower --max-steps"]),
    ("sampler-eval-guide-is-student", ["sampler-eval", "--teacher", "{teacher}", "--guide-model", "{student}", "--out",
                                       "{work}/s"], ["--guide-model", "is a distilled student"],
     ["pass a teacher checkpoint"]),
    ("sampler-eval-guide-other-data", ["sampler-eval", "--teacher", "{teacher}", "--guide-model", "{teacher_no_data}",
                                       "--out", "{work}/s"],
     ["--guide-model teacher_no_data.safetensors: its provenance.data (None) is not the teacher's"],
     ["the teacher's command and a lower --max-steps"]),
    ("sampler-eval-guide-pickle", ["sampler-eval", "--teacher", "{teacher}", "--guide-model", "{model.pt}", "--out",
                                   "{work}/s"], ["--guide-model", "model.pt is a pickle-format file"],
     ["Convert it with safetensors"]),
    # --- distill
    ("distill-seed-past-its-streams", ["distill", "--teacher", "{teacher}", "--seed", "9223372036854775807"],
     ["--seed", "'9223372036854775807' is too large"], ["from 0 to 4294967295"]),
    ("distill-models-dir-holds-a-users-file", ["distill", "--teacher", "{teacher}", "--run-dir", "{work}/r",
                                                "--models-dir", "{user_models}"],
     ["already holds pvtt_student_4step.safetensors, which is not a student PVTT wrote"],
     ["move that file away", "another --models-dir"]),
    ("distill-path-increasing", ["distill", "--teacher", "{teacher}", "--path", "4,8"], ["--path", "'4,8'"],
     ["strictly decreasing", "e.g. 16,8,4"]),
    ("distill-path-ends-at-zero", ["distill", "--teacher", "{teacher}", "--path", "8,0"], ["--path", "'8,0'"],
     ["step counts >= 1"]),
    ("distill-path-repeated", ["distill", "--teacher", "{teacher}", "--path", "8,8,4"], ["fewer steps than"],
     ["strictly decreasing"]),
    ("distill-path-unknown-name", ["distill", "--teacher", "{teacher}", "--path", "gentlest"],
     ["unknown path 'gentlest'"], ["default, gentle", "16,8,4"]),
    ("distill-budgets-per-stage", ["distill", "--teacher", "{teacher}", "--generator-steps", "10,10"],
     ["2 generator-step budgets for 3 stages"], ["give one or one per stage"]),
    ("distill-budget-zero", ["distill", "--teacher", "{teacher}", "--generator-steps", "10,0,10"],
     ["--generator-steps", "'10,0,10'"], [">= 1"]),
    ("distill-weight-unknown", ["distill", "--teacher", "{teacher}", "--weight", "lpips=1"],
     ["--weight", "unknown loss 'lpips'"], ["NAME one of dmd", "perceptual"]),
    ("distill-weight-negative", ["distill", "--teacher", "{teacher}", "--weight", "temporal=-1"],
     ["--weight", "'temporal=-1'"], ["weight >= 0", "temporal=0.2:10"]),
    ("distill-eval-clips-one", ["distill", "--teacher", "{teacher}", "--eval-clips", "1"], ["--eval-clips"],
     [">= 2"]),
    ("distill-lr-critic-negative", ["distill", "--lr-critic", "-0.0001"], ["--lr-critic"], ["> 0"]),
    ("distill-ema-decay-one", ["distill", "--ema-decay", "1"], ["--ema-decay"], ["< 1"]),
    ("distill-teacher-cfg-negative", ["distill", "--teacher-cfg", "-0.5"], ["--teacher-cfg"], [">= 0"]),
    ("distill-critic-ratio-zero", ["distill", "--critic-ratio", "0"], ["--critic-ratio"], [">= 1"]),
    ("distill-run-dir-not-empty", ["distill", "--teacher", "{teacher}", "--run-dir", "{user_run}"],
     ["run folder", "user_run is not empty (thesis.tex)"], ["Add --resume", "or --overwrite"]),
    ("distill-overwrite-a-users-folder", ["distill", "--teacher", "{teacher}", "--run-dir", "{user_run}",
                                          "--overwrite"], ["was not created by PVTT", ".pvtt-run marker"],
     ["Delete or move it yourself"]),
    ("distill-resume-and-overwrite", ["distill", "--teacher", "{teacher}", "--resume", "--overwrite"],
     ["--resume continues the run", "--overwrite deletes it"], ["pass one of them"]),
    ("distill-run-dir-is-file", ["distill", "--run-dir", "{a_file.txt}"], ["--run-dir", "existing file"],
     ["pass a folder path"]),
    ("distill-teacher-missing", ["distill", "--teacher", "{work}/missing.safetensors"], ["not found"],
     ["pass the path of a teacher checkpoint"]),
    ("distill-teacher-truncated", ["distill", "--teacher", "{truncated}"],
     ["--teacher", "truncated.safetensors is not a readable safetensors file", "truncated or corrupt"],
     ["copy or export it again"]),
    ("distill-teacher-garbage", ["distill", "--teacher", "{garbage}"], ["not a readable safetensors file"],
     ["copy or export it again"]),
    ("distill-teacher-no-metadata", ["distill", "--teacher", "{plain}"], ["plain.safetensors has no PVTT metadata"],
     ["Use a checkpoint written by pvtt_train"]),
    ("distill-teacher-is-video-encoder", ["distill", "--teacher", "{video}"],
     ["is a PVTT video encoder, not a diffusion model"], ["pass a teacher checkpoint"]),
    ("distill-video-encoder-is-student", ["distill", "--teacher", "{teacher}", "--video-encoder", "{student}"],
     ["--video-encoder", "is a PVTT diffusion checkpoint, not a video encoder"], ["pass the video encoder"]),
    ("distill-video-encoder-pickle", ["distill", "--teacher", "{teacher}", "--video-encoder", "{video.pth}"],
     ["--video-encoder", "video.pth is a pickle file"], ["pass the .safetensors file"]),
    ("distill-identity-encoder-is-teacher", ["distill", "--teacher", "{teacher}", "--identity-encoder", "{teacher}"],
     ["--identity-encoder", "not a PVTT identity encoder"], ["python -m pvtt_train identity-encoder"]),
    ("distill-teacher-shift-zero", ["distill", "--teacher", "{teacher}", "--teacher-shift", "0"],
     ["--teacher-shift", "'0' is out of range"], ["> 0", "e.g. 5, Wan 2.1's at 720p"]),
    ("distill-guide-weight-without-guide", ["distill", "--teacher", "{teacher}", "--guide-weight", "2"],
     ["--guide-weight", "no --guide-model was given"], ["pass the guide", "or drop --guide-weight"]),
    ("distill-guide-is-the-teacher", ["distill", "--teacher", "{teacher}", "--guide-model", "{teacher}"],
     ["--guide-model", "is the teacher itself, so autoguidance would change nothing"],
     ["pass a weaker copy: the teacher's command with a lower --max-steps"]),
    ("distill-guide-is-student", ["distill", "--teacher", "{teacher}", "--guide-model", "{student}"],
     ["--guide-model", "is a distilled student"], ["pass a teacher checkpoint"]),
    ("distill-guide-other-data", ["distill", "--teacher", "{teacher}", "--guide-model", "{teacher_no_data}"],
     ["--guide-model teacher_no_data.safetensors: its provenance.data (None) is not the teacher's"],
     ["the teacher's command and a lower --max-steps"]),
    # --- evaluate
    ("evaluate-student-missing", ["evaluate", "--teacher", "{teacher}", "--student", "{work}/s.safetensors",
                                  "--out", "{work}/e"], ["--student", "not found"], ["a distilled student"]),
    ("evaluate-student-is-teacher", ["evaluate", "--teacher", "{teacher}", "--student", "{teacher}", "--out",
                                     "{work}/e"], ["is a teacher, not a distilled student"],
     ["written by `python -m pvtt_train distill`"]),
    ("evaluate-student-pickle", ["evaluate", "--teacher", "{teacher}", "--student", "{weights.bin}", "--out",
                                 "{work}/e"], ["weights.bin is a pickle-format file"], ["Convert it with safetensors"]),
    ("evaluate-clips-zero", ["evaluate", "--student", "{student}", "--out", "{work}/e", "--clips", "0"], ["--clips"],
     [">= 1"]),
    # --- demo
    ("demo-teacher-is-identity-encoder", ["demo", "--out", "{work}/demo", "--teacher", "{identity}"],
     ["--teacher", "identity encoder"], ["pass a teacher checkpoint"]),
    ("demo-models-dir-is-file", ["demo", "--out", "{work}/demo", "--models-dir", "{a_file.txt}"],
     ["--models-dir", "existing file"], ["pass a folder path"]),
    ("demo-existing-run-folder", ["demo", "--out", "{user_out}", "--teacher", "{teacher}"],
     ["run folder", "is not empty (thesis.tex)"], ["Add --resume", "or --overwrite"]),
    ("demo-clips-zero", ["demo", "--out", "{work}/demo", "--clips", "0"], ["--clips"], [">= 1"]),
    ("demo-models-dir-holds-a-users-file", ["demo", "--out", "{work}/demo", "--teacher", "{teacher}", "--models-dir",
                                             "{user_models}"],
     ["already holds pvtt_student_4step.safetensors, which is not a student PVTT wrote"],
     ["move that file away", "another --models-dir"]),
    # --- identity-encoder / identity-eval
    ("identity-encoder-out-folder", ["identity-encoder", "--out", "{folder}"], ["is a folder"],
     ["ending in .safetensors"]),
    ("identity-encoder-steps-zero", ["identity-encoder", "--steps", "0"], ["--steps"], [">= 1"]),
    ("identity-encoder-batch-one", ["identity-encoder", "--batch-size", "1"], ["--batch-size", "'1'"],
     [">= 2", "compared with the others"]),
    ("identity-encoder-minutes-negative", ["identity-encoder", "--minutes", "-1"], ["--minutes"],
     [">= 0", "0 = no limit"]),
    ("identity-eval-missing", ["identity-eval", "--encoder", "{work}/id.safetensors"],
     ["--encoder", "identity encoder not found"], ["Pass a .safetensors file written by"]),
    ("identity-eval-pickle", ["identity-eval", "--encoder", "{encoder.ckpt}"],
     ["--encoder", "encoder.ckpt is a pickle-format file"], ["Convert it with safetensors"]),
    ("identity-eval-student", ["identity-eval", "--encoder", "{student}"], ["not a PVTT identity encoder"],
     ["written by `python -m pvtt_train identity-encoder`"]),
    ("identity-eval-clips-one", ["identity-eval", "--clips", "1"], ["--clips"], [">= 2"]),
    # --- fvd / video-encoder
    ("fvd-missing-folder", ["fvd", "--videos-dir", "{work}/nothing", "--reference-dir", "{empty_videos}"],
     ["--videos-dir", "is not a folder"], ["pass a folder of *.mp4 files"]),
    ("fvd-empty-folder", ["fvd", "--videos-dir", "{empty_videos}", "--reference-dir", "{empty_videos}",
                          "--encoder", "{video}"], ["--videos-dir", "holds no videos"], ["expected *.mp4 files"]),
    ("fvd-unreadable-videos", ["fvd", "--videos-dir", "{broken_videos}", "--reference-dir", "{empty_videos}",
                               "--encoder", "{video}"], ["a.mp4 has no readable frames"], ["re-export it"]),
    ("fvd-frames-of-two-sizes", ["fvd", "--videos-dir", "{mixed_sizes}", "--reference-dir", "{mixed_sizes}",
                                 "--encoder", "{video}"], ["frames in", "differ in size"],
     ["export every frame at one size"]),
    ("fvd-clip-not-in-examples", ["fvd", "--videos-dir", "{examples}", "--reference-dir", "{examples}",
                                  "--encoder", "{video}", "--clip", "mask"], ["has no 'mask' clip"],
     ["choose another --clip"]),
    ("fvd-encoder-is-student", ["fvd", "--videos-dir", "{empty_videos}", "--reference-dir", "{empty_videos}",
                                "--encoder", "{student}"], ["--encoder", "diffusion checkpoint, not a video encoder"],
     ["pass the video encoder"]),
    ("fvd-encoder-truncated", ["fvd", "--videos-dir", "{empty_videos}", "--reference-dir", "{empty_videos}",
                               "--encoder", "{truncated}"], ["not a readable safetensors file"],
     ["copy or convert it again"]),
    ("fvd-encoder-pickle", ["fvd", "--videos-dir", "{empty_videos}", "--reference-dir", "{empty_videos}",
                            "--encoder", "{video.pth}"], ["video.pth is a pickle file"], ["convert it yourself"]),
    ("video-encoder-minutes-zero", ["video-encoder", "--minutes", "0"], ["--minutes", "'0'"], ["> 0"]),
    ("video-encoder-steps-zero", ["video-encoder", "--max-steps", "0"], ["--max-steps"], [">= 1"]),
    ("video-encoder-out-bin", ["video-encoder", "--out", "{work}/enc.bin"], ["does not end in .safetensors"],
     ["enc.safetensors"]),
    # --- export-lora
    ("export-lora-rank-zero", ["export-lora", "--student", "{student}", "--out", "{work}/l.safetensors", "--rank",
                               "0"], ["--rank", "'0'"], [">= 1"]),
    ("export-lora-out-pickle-suffix", ["export-lora", "--student", "{student}", "--out", "{work}/lora.pt"],
     ["lora.pt does not end in .safetensors"], ["lora.safetensors"]),
    ("export-lora-student-is-teacher", ["export-lora", "--teacher", "{teacher}", "--student", "{teacher}", "--out",
                                        "{work}/l.safetensors"], ["--student", "is a teacher"],
     ["pass a distilled student"]),
    ("export-lora-teacher-is-student", ["export-lora", "--teacher", "{student}", "--student", "{student}", "--out",
                                        "{work}/l.safetensors"], ["--teacher", "is a distilled student"],
     ["pass a teacher checkpoint"]),
    ("export-lora-student-no-metadata", ["export-lora", "--teacher", "{teacher}", "--student", "{plain}", "--out",
                                         "{work}/l.safetensors"], ["--student", "no PVTT metadata"],
     ["Use a checkpoint written by pvtt_train"]),
    # --- prepare-data / distill --data
    ("prepare-data-model-missing", ["prepare-data", "--clips", "{folder}", "--out", "{work}/ds", "--model",
                                    "{work}/nope.safetensors"], ["--model", "not found"], ["pass the path of"]),
    ("prepare-data-clips-not-a-folder", ["prepare-data", "--clips", "{a_file.txt}", "--out", "{work}/ds", "--model",
                                         "{teacher}"], ["--clips", "not a folder"], ["one sub-folder per clip"]),
    ("prepare-data-no-clips", ["prepare-data", "--clips", "{folder}", "--out", "{work}/ds", "--model", "{teacher}"],
     ["--clips", "no clip sub-folders"], ["in its own folder"]),
    ("prepare-data-heldout-negative", ["prepare-data", "--clips", "{folder}", "--out", "{work}/ds", "--model",
                                       "{teacher}", "--heldout", "-1"], ["--heldout", "'-1'"], [">= 0"]),
    ("distill-data-not-a-dataset", ["distill", "--teacher", "{teacher}", "--data", "{folder}", "--run-dir",
                                    "{work}/r", "--models-dir", "{work}/m"], ["--data", "no manifest.json"],
     ["written by `python -m pvtt_train prepare-data`", "'synthetic'"]),
    # --- sample
    ("sample-template-missing", ["sample", "--model", "{teacher}", "--template", "{work}/nope.mp4", "--mask",
                                "{video}", "--product", "{work}/nope.png", "--out", "{work}/o.mp4"],
     ["--template", "not found"], []),
    # --- export
    ("export-out-not-safetensors", ["export", "--model", "{teacher}", "--out", "{work}/x.ckpt", "--format", "comfy"],
     ["--out", "writes one .safetensors file"], ["x.safetensors"]),
    ("export-model-pickle", ["export", "--model", "{model.pt}", "--out", "{work}/x.safetensors"],
     ["--model", "pickle-format"], ["Convert it with safetensors"]),
    ("export-embedded-model-as-comfy", ["export", "--model", "{teacher}", "--out", "{work}/x.safetensors",
                                        "--format", "comfy"], ["only Wan-VACE models have"], ["Use --format pvtt"]),
    ("export-vae-out-without-comfy", ["export", "--model", "{teacher}", "--out", "{work}/x.safetensors",
                                      "--vae-out", "{work}/v.safetensors"], ["--vae-out is for --format comfy"], []),
    # --- bench / bench-attention
    ("bench-device-unknown", ["bench", "--device", "gpu"], ["--device", "unknown device 'gpu'"],
     ["cpu, cuda or cuda:N"]),
    ("bench-clips-zero", ["bench", "--clips", "0"], ["--clips"], [">= 1"]),
    ("bench-students-missing", ["bench", "--teacher", "{teacher}", "--students", "{work}/s4.safetensors"],
     ["not found", "s4.safetensors"], ["Pass --teacher/--students"]),
    ("bench-student-is-identity-encoder", ["bench", "--teacher", "{teacher}", "--students", "{identity}"],
     ["--students", "identity encoder, not a diffusion model"], ["PVTT teacher or student checkpoint"]),
    ("bench-teacher-folder-not-diffusers", ["bench", "--teacher", "{folder}", "--students", "{student}"],
     ["--teacher", "has no model_index.json", "not a diffusers model folder"],
     ["Pass a Wan 2.1 VACE diffusers folder or a PVTT .safetensors file"]),
    ("bench-unknown-variant", ["bench", "--teacher", "{teacher}", "--students", "{student}", "--variants",
                               "eager,warp-drive"], ["--variants", "unknown warp-drive"], ["choose from eager"]),
    ("bench-attention-layout-short", ["bench-attention", "--layouts", "576x4"], ["'576x4' is not a layout"],
     ["TOKENSxHEADSxHEAD_DIM", "576x4x32"]),
    ("bench-attention-layout-zero", ["bench-attention", "--layouts", "0x4x32"], ["'0x4x32'"], [">= 1"]),
    ("bench-attention-repeats-zero", ["bench-attention", "--repeats", "0"], ["--repeats"], [">= 1"]),
    ("plan-gpu-memory-unitless-word", ["plan", "--model", "wan2.1-vace-1.3b", "--gpu-memory", "lots"],
     ["--gpu-memory", "'lots' is not a memory size"], ["80GiB"]),
    ("plan-model-missing", ["plan", "--model", "{work}/nowhere"], ["--model", "not found"],
     ["wan2.1-vace-1.3b"]),
    ("gpu-check-real-model-on-cpu", ["gpu-check", "--out", "{work}/gc", "--device", "cpu"],
     ["--device cpu runs only --config tiny"], ["add --config tiny"]),
]
if not torch.cuda.is_available():
    CASES.append(("bench-no-cuda", ["bench", "--teacher", "{teacher}", "--students", "{student}", "--device", "cuda"],
                  ["--device cuda", "sees no CUDA GPU"], ["use --device cpu"]))


def fill(argv: list[str], files: dict, work: Path) -> list[str]:
    """``{name}`` -> the path of ``files[name]`` (names may hold dots: ``{model.pt}``), ``{work}`` -> cwd."""
    names = {k: str(v) for k, v in files.items()} | {"work": str(work)}
    return [re.sub(r"\{([^{}]+)\}", lambda m: names[m.group(1)], a) for a in argv]


def command_of(argv: list[str]) -> str | None:
    """The sub-command of ``argv`` (None when the error is the program's own, before it)."""
    if argv[0] == "--threads":
        return None
    return argv[0]


@pytest.mark.parametrize("argv, problem, fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_the_problem_and_the_fix(argv, problem, fix, files, work, capsys):
    argv = fill(argv, files, work)
    code, stderr = run_main(argv, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    line = error_line(stderr, command_of(argv))
    for text in problem + fix:
        assert text in line, f"{text!r} not in {line!r}"
    assert snapshot(work) == [], "a refused command left files behind"
    assert not files["marker"].exists(), "a pickle file was unpickled"


def test_a_student_of_an_earlier_run_is_replaced_but_a_link_of_the_users_is_not(files, tmp_path):
    """Re-running into the same --models-dir replaces PVTT's own students; a link the user put under a student's name
    is theirs (replacing it would drop the link), so the run is refused and the link kept."""
    from pvtt_train.cli_args import check_student_targets
    from pvtt_train.distill.config import build_stages

    models = tmp_path / "models"
    models.mkdir()
    (models / "pvtt_student_4step.safetensors").write_bytes(files["student"].read_bytes())
    check_student_targets(models, build_stages((8, 4), 1))  # a PVTT student of an earlier run: no refusal
    (models / "pvtt_student_8step.safetensors").symlink_to(files["student"])
    with pytest.raises(InputError, match="already holds pvtt_student_8step.safetensors, which is not a student"):
        check_student_targets(models, build_stages((8, 4), 1))
    assert (models / "pvtt_student_8step.safetensors").is_symlink()


def test_the_matrix_covers_every_command():
    parser = build_parser()
    commands = set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    covered = {command_of(c[1]) for c in CASES}
    assert commands <= covered, f"no bad-input case for {sorted(commands - covered)}"
    assert len(CASES) >= 40


# --- how errors end: user errors cleanly, bugs with their traceback ------------------------------------------

def test_a_real_bug_keeps_its_traceback(work, monkeypatch):
    from pvtt_train.data import export

    def broken(*a, **k):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(export, "export_examples", broken)
    with pytest.raises(RuntimeError, match="a bug, not bad input"):
        main(["data", "--out", str(work / "d")])


@pytest.mark.parametrize("switch", ["flag", "env"])
def test_debug_shows_the_traceback_of_a_user_error(switch, files, work, monkeypatch):
    argv = ["evaluate", "--student", str(work / "missing.safetensors"), "--out", str(work / "e")]
    if switch == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("PVTT_DEBUG", "1")
    with pytest.raises(InputError, match="not found"):
        main(argv)


@pytest.mark.parametrize("error, code, text", [
    (lambda: __import__("pvtt_accel.optional", fromlist=["MissingPackage"]).MissingPackage(
        "INT8 needs torchao, which is not installed. Install it: pip install torchao"), 2, "pip install torchao"),
    (lambda: OSError(errno.ENOSPC, "no space left on the device; free space and run again"), 2,
     "error: no space left on the device; free space and run again"),
    (lambda: FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/clip.mp4"), 2,
     "error: No such file or directory: /gone/clip.mp4"),
])
def test_other_user_facing_errors_end_cleanly(error, code, text, work, monkeypatch, capsys):
    from pvtt_train.data import export

    def fails(*a, **k):
        raise error()

    monkeypatch.setattr(export, "export_examples", fails)
    got, stderr = run_main(["data", "--out", str(work / "d")], capsys)
    assert got == code and text in error_line(stderr, "data") and "Traceback" not in stderr and "[Errno" not in stderr


def test_a_failed_gate_exits_1_with_its_report(files, work, monkeypatch, capsys):
    from pvtt_train.distill import progressive
    from pvtt_train.distill.gates import GateFailed

    def gate_fails(*a, **k):
        raise GateFailed("student_4step", {"checks": [{"name": "frechet_distance", "value": 2.0, "limit": 1.1,
                                                       "passed": False}]})

    monkeypatch.setattr(progressive, "make_accelerator", lambda *a, **k: None)
    monkeypatch.setattr(progressive, "run_progressive", gate_fails)
    code, stderr = run_main(["distill", "--teacher", str(files["teacher"])], capsys)
    assert code == 1 and "Traceback" not in stderr
    assert "stage student_4step failed its gate" in error_line(stderr, "distill") and "--force" in stderr


@pytest.mark.parametrize("argv, hint", [
    (["data", "--out", "{work}/d"], "run the same command again"),
    (["distill", "--teacher", "{teacher}"], "run the same command with --resume"),
    (["evaluate", "--teacher", "{teacher}", "--student", "{student}", "--out", "{work}/e"],
     "nothing was finished"),
])
def test_ctrl_c_exits_130_with_how_to_continue(argv, hint, files, work, monkeypatch, capsys):
    from pvtt_train.data import export
    from pvtt_train.distill import progressive
    from pvtt_train.models import checkpoint, loading

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_examples", interrupted)
    monkeypatch.setattr(progressive, "make_accelerator", lambda *a, **k: None)
    monkeypatch.setattr(progressive, "run_progressive", interrupted)
    monkeypatch.setattr(checkpoint, "load_checkpoint", interrupted)
    monkeypatch.setattr(loading, "load_model", interrupted)
    argv = fill(argv, files, work)
    code, stderr = run_main(argv, capsys)
    assert code == 130 and "Traceback" not in stderr
    assert f"{PROG} {argv[0]}: interrupted; {hint}" in stderr


# --- end to end, in a real process ------------------------------------------------------------------------

def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PVTT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pvtt_train", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_help_is_quiet_and_imports_nothing_heavy(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: python -m pvtt_train" in result.stdout
    assert result.stderr == "", result.stderr  # no torchao / pytree warnings, no log lines
    for line in result.stdout.splitlines():
        assert not line.startswith(("W1", "I1", "E1")) and "Warning" not in line, line
    heavy = ("torch", "diffusers", "cv2", "numpy", "torchao", "pvtt_accel")
    probe = f"import sys; from pvtt_train.__main__ import build_parser; build_parser(); " \
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_a_parse_error_end_to_end(tmp_path):
    result = run_cli("data", "--out", str(tmp_path / "d"), "--height", "15", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"{PROG} data: error: argument --height: 15 pixels")
    assert not (tmp_path / "d").exists()


def test_a_pickle_teacher_end_to_end_is_refused_unopened(files, tmp_path):
    result = run_cli("teacher-eval", "--teacher", str(files["model.pt"]), "--out", str(tmp_path / "e"),
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [(f"{PROG} teacher-eval: error: --teacher: model.pt is a pickle-format file; PVTT loads only "
                       f".safetensors (pickles can run code). Convert it with safetensors, then load the result.")]
    assert not (tmp_path / "e").exists() and not files["marker"].exists()
