"""``sampler-eval``: the teacher's undistilled samplers beside its students, and issue 14's synthetic bars."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pvtt_train.data.batches import training_data_config
from pvtt_train.distill.gates import GateEvaluator
from pvtt_train.distill.report import teacher_as_few_step
from pvtt_train.errors import InputError
from pvtt_train.eval.sampler_eval import (check_bars, markdown, run_sampler_eval, teacher_ancestral_at,
                                         teacher_euler_at, undistilled_variants, write_report)
from pvtt_train.eval.sampler_oracle import leaves_open, oracle_rows, redrawn_targets
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.models.schedule import uniform_timesteps
from tests._tiny import load_micro_teacher, micro_encoders


def row(name, kind, steps, fd, speedup=1.0, retention=1.0):
    return {"name": name, "kind": kind, "steps": steps, "scores": {"frechet_distance": fd}, "speedup": speedup,
            "retention": {"min": retention}}


def test_every_bar_passes_when_the_teacher_is_best_and_the_student_beats_the_undistilled_sampler():
    rows = [row("teacher Euler 50", "teacher", 50, 1.0), row("teacher Euler 4", "undistilled", 4, 3.0),
            row("teacher few-step 4", "undistilled", 4, 2.0), row("student_4step", "student", 4, 1.1, 25.0, 0.97)]
    bars = check_bars(rows)
    assert bars["passed"] and len(bars["checks"]) == 5
    assert bars["checks"][1]["limit"] == pytest.approx(0.7 * 2.0)  # the better of the two undistilled 4-step samplers


def test_an_undistilled_sampler_better_than_the_teachers_own_fails_and_is_named():
    rows = [row("teacher Euler 50", "teacher", 50, 2.0), row("teacher few-step 16", "undistilled", 16, 1.5)]
    bars = check_bars(rows)
    assert not bars["passed"]
    assert bars["checks"][0]["best"] == "teacher few-step 16" and bars["checks"][0]["limit"] == 1.5


@pytest.mark.parametrize(("teacher_fd", "undistilled_fd", "student", "failed"), [
    (1.35, 2.0, row("student_4step", "student", 4, 1.5, 25.0, 0.97), "0.7 x the best undistilled"),  # 1.5 > 1.4
    (1.0, 3.0, row("student_4step", "student", 4, 1.2, 25.0, 0.97), "1.15 x the teacher's"),  # 1.2 > 1.15
    (1.0, 2.0, row("student_4step", "student", 4, 1.1, 25.0, 0.94), "retention"),
    (1.0, 2.0, row("student_4step", "student", 4, 1.1, 19.9, 0.97), "speed-up"),
])
def test_each_student_bar_fails_on_its_own(teacher_fd, undistilled_fd, student, failed):
    rows = [row("teacher Euler 50", "teacher", 50, teacher_fd), row("teacher few-step 4", "undistilled", 4,
                                                                     undistilled_fd), student]
    bars = check_bars(rows)
    assert [c["name"] for c in bars["checks"] if not c["passed"]] == \
        [c["name"] for c in bars["checks"] if failed in c["name"]]
    assert not bars["passed"]


def test_the_fastest_student_is_the_one_held_to_the_bars():
    rows = [row("teacher Euler 50", "teacher", 50, 1.0), row("teacher few-step 8", "undistilled", 8, 2.0),
            row("teacher few-step 4", "undistilled", 4, 2.0), row("student_8step", "student", 8, 9.0, 5.0, 0.5),
            row("student_4step", "student", 4, 1.1, 25.0, 0.97)]
    bars = check_bars(rows)
    assert bars["passed"] and all("student_4step" in c["name"] for c in bars["checks"][1:])


def test_every_student_at_the_fewest_steps_is_held_to_the_bars_on_its_own():
    rows = [row("teacher Euler 50", "teacher", 50, 1.9), row("teacher few-step 4", "undistilled", 4, 2.0),
            row("gan_4step", "student", 4, 1.1, 25.0, 0.97), row("dmd_4step", "student", 4, 1.5, 25.0, 0.97)]
    bars = check_bars(rows)
    assert len(bars["checks"]) == 1 + 4 + 4
    assert [c["name"] for c in bars["checks"] if not c["passed"]] == ["dmd_4step Fréchet <= 0.7 x the best undistilled "
                                                                      "4-step sample"]
    assert all(c["passed"] for c in bars["checks"] if "gan_4step" in c["name"]) and not bars["passed"]


def test_undistilled_variants_lower_the_steps_of_both_samplers_and_leave_the_teacher_alone(tmp_path):
    teacher = load_micro_teacher(tmp_path, steps=50, cfg=1.5)
    before = json.dumps(teacher.metadata, sort_keys=True)
    variants = undistilled_variants(teacher, (4, 16, 50, 4))
    assert [(name, sampler, steps) for name, sampler, steps, _ in variants] == [
        ("teacher Euler 50", "euler", 50), ("teacher Euler 16", "euler", 16), ("teacher few-step 16", "few_step", 16),
        ("teacher Euler 4", "euler", 4), ("teacher few-step 4", "few_step", 4)]
    euler4, few4 = variants[3][3], variants[4][3]
    assert euler4.sampler == {"kind": "euler_cfg", "steps": 4, "cfg": 1.5}  # its CFG kept
    assert few4.sampler == {"kind": "few_step", "steps": 4, "timesteps": list(uniform_timesteps(4))}
    assert euler4.model is teacher.model and json.dumps(teacher.metadata, sort_keys=True) == before


def test_ancestral_variants_sit_beside_euler_at_every_step_count_its_own_included(tmp_path):
    teacher = load_micro_teacher(tmp_path, steps=50, cfg=1.5)
    variants = undistilled_variants(teacher, (4,), ancestral=True)
    assert [(name, sampler, steps) for name, sampler, steps, _ in variants] == [
        ("teacher Euler 50", "euler", 50), ("teacher Euler ancestral 50", "euler_ancestral", 50),
        ("teacher Euler 4", "euler", 4), ("teacher Euler ancestral 4", "euler_ancestral", 4),
        ("teacher few-step 4", "few_step", 4)]
    assert variants[3][3].sampler == {"kind": "euler_cfg", "steps": 4, "cfg": 1.5, "eta": 1.0}
    assert "eta" not in teacher.sampler and variants[3][3].model is teacher.model


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sampler_eval")
    teacher = load_micro_teacher(folder, steps=3, cfg=1.5)
    _, video_encoder = micro_encoders(folder)
    # A "student" that is the teacher's weights with the one-step few-step sampler: it must score exactly as
    # the undistilled one-step row does, since every model is sampled with the same clips and noise.
    student = dataclasses.replace(teacher_as_few_step(teacher, uniform_timesteps(1)),
                                  path=folder / "student_1step.safetensors")
    report = run_sampler_eval(teacher, [student], clips=4, step_counts=(2,), video_encoder=str(video_encoder),
                              log=lambda line: None)
    return teacher, video_encoder, report


def test_the_sweep_scores_every_sampler_and_student_on_the_gate_clips(micro_run):
    teacher, video_encoder, report = micro_run
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["teacher Euler 3", "teacher Euler 2", "teacher few-step 2", "teacher Euler 1",
                          "teacher few-step 1", "student_1step"]
    assert rows["student_1step"]["scores"]["frechet_distance"] == \
        rows["teacher few-step 1"]["scores"]["frechet_distance"]
    assert rows["teacher Euler 3"]["speedup"] == 1.0 and rows["teacher Euler 3"]["retention"]["min"] == 1.0
    # the gates' own evaluator, built afresh, gives the teacher the same score: the figures match the gates'
    gates = GateEvaluator(training_data_config(teacher), 4, str(video_encoder), cache_dir=None)
    assert gates.score_teacher(teacher)["frechet_distance"] == pytest.approx(
        rows["teacher Euler 3"]["scores"]["frechet_distance"], rel=1e-6)


def test_three_euler_steps_cost_more_than_one_few_step_call(micro_run):
    rows = {r["name"]: r for r in micro_run[2]["rows"]}
    # 3 steps x 2 calls (CFG) against 1 call: measured in one process, asserted with a wide margin
    assert rows["student_1step"]["speedup"] > 2.0


def test_the_report_is_written_whole_with_its_bars(micro_run, tmp_path):
    report = micro_run[2]
    json_path, md_path = write_report(tmp_path / "out", report)
    assert json.loads(json_path.read_text())["bars"] == report["bars"]
    text = md_path.read_text()
    assert "| teacher few-step 2 | few_step | 2 |" in text
    assert sum(line.endswith(("| pass |", "| FAIL |")) for line in text.splitlines()) == len(report["bars"]["checks"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]


def test_the_command_scores_a_given_teacher_alone_and_writes_its_report(tmp_path, capsys):
    from pvtt_train.__main__ import main
    from tests._tiny import micro_teacher

    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=3)
    _, video_encoder = micro_encoders(tmp_path)
    main(["--threads", "1", "sampler-eval", "--teacher", str(teacher), "--steps", "2", "--clips", "2",
          "--video-encoder", str(video_encoder), "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["teacher Euler 3", "teacher Euler 2", "teacher few-step 2"]
    assert report["students"] == [] and len(report["bars"]["checks"]) == 1  # with --teacher, no shipped students
    assert "| teacher Euler 3 | euler | 3 |" in capsys.readouterr().out


def test_the_command_adds_euler_ancestral_rows_scored_like_the_gates_and_held_to_the_bars(tmp_path):
    from pvtt_train.__main__ import main
    from tests._tiny import micro_teacher

    teacher_path = micro_teacher(tmp_path / "teacher.safetensors", steps=3)
    _, video_encoder = micro_encoders(tmp_path)
    main(["--threads", "1", "sampler-eval", "--teacher", str(teacher_path), "--steps", "2", "--clips", "2",
          "--ancestral", "--video-encoder", str(video_encoder), "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["teacher Euler 3", "teacher Euler ancestral 3", "teacher Euler 2",
                          "teacher Euler ancestral 2", "teacher few-step 2"]
    assert {rows[n]["kind"] for n in rows if "ancestral" in n} == {"undistilled"}
    teacher = load_checkpoint(teacher_path)
    fresh = GateEvaluator(training_data_config(teacher), 2, str(video_encoder), cache_dir=None)
    scored = fresh.score(teacher_ancestral_at(teacher, 2), "ancestral 2")["frechet_distance"]
    assert rows["teacher Euler ancestral 2"]["scores"]["frechet_distance"] == pytest.approx(scored, rel=1e-6)
    fresh.score(teacher_euler_at(teacher, 2), "euler 2")  # the ancestral samples are not Euler's
    assert (fresh.videos["ancestral 2"] - fresh.videos["euler 2"]).abs().max() > 1e-3
    best = min(rows.values(), key=lambda r: r["scores"]["frechet_distance"])
    assert report["bars"]["checks"][0]["limit"] == best["scores"]["frechet_distance"]


@pytest.fixture(scope="module")
def shiny_run(tmp_path_factory):
    """A micro teacher whose data has a highlight its conditioning leaves open, scored with the oracles."""
    from pvtt_train.data.synthetic import SyntheticConfig
    from tests._tiny import micro_teacher

    folder = tmp_path_factory.mktemp("sampler_oracle")
    data = SyntheticConfig(specular=0.8)
    teacher = load_checkpoint(micro_teacher(folder / "teacher.safetensors", steps=2, data=data))
    _, video_encoder = micro_encoders(folder)
    report = run_sampler_eval(teacher, [], clips=6, step_counts=(1,), video_encoder=str(video_encoder),
                              oracle_draws=4, log=lambda line: None)
    return teacher, video_encoder, report


def test_the_oracles_are_scored_beside_the_samplers_and_kept_out_of_the_bars(shiny_run):
    report = shiny_run[2]
    oracles = [r for r in report["rows"] if r["kind"] == "oracle"]
    assert [r["name"] for r in oracles] == [
        "perfect sampler (what the conditioning leaves open redrawn; mean of 4 draws)",
        "perfect regressor (mean of the 4 draws)"]
    assert report["bars"] == check_bars([r for r in report["rows"] if r["kind"] != "oracle"])
    low, high = oracles[0]["scores"]["frechet_range"]
    assert low <= oracles[0]["scores"]["frechet_distance"] <= high and low < high
    assert "speedup" not in oracles[0] and "seconds_per_clip" not in oracles[0]["scores"]
    text = markdown(report)
    assert "| perfect regressor (mean of the 4 draws) | oracle | — |" in text
    assert "Oracles: a perfect sampler" in text


def test_the_oracles_are_the_draws_and_their_mean_scored_as_the_gates_score_samples(shiny_run):
    teacher, video_encoder, report = shiny_run
    sampler, regressor = (r["scores"] for r in report["rows"] if r["kind"] == "oracle")
    # the mean of the draws is nearer the truth pixel for pixel than any one draw: what PSNR rewards
    assert regressor["product_psnr"] > sampler["product_psnr"]
    # scored by hand through a fresh gate evaluator: draws 1..4 and their mean
    data = training_data_config(teacher)
    gates = GateEvaluator(data, 6, str(video_encoder), cache_dir=None)
    seeds = [int(s) for s in gates.batch["seed"]]
    draws = [redrawn_targets(data, seeds, d) for d in range(1, 5)]
    by_hand = [gates.score_clips(clips)["frechet_distance"] for clips in draws]
    assert sampler["frechet_distance"] == pytest.approx(sum(by_hand) / 4, rel=1e-9)
    assert sampler["frechet_range"] == pytest.approx([min(by_hand), max(by_hand)], rel=1e-9)
    mean = gates.score_clips(sum(draws) / 4)
    assert regressor["frechet_distance"] == pytest.approx(mean["frechet_distance"], rel=1e-6)


def test_data_without_anything_left_open_gets_no_oracle_rows(micro_run):
    assert all(r["kind"] != "oracle" for r in micro_run[2]["rows"])  # its micro teacher's data has no highlight
    assert "Oracles" not in markdown(micro_run[2])


def test_a_highlight_a_sheen_or_a_grain_leaves_something_open_and_plain_data_nothing():
    from pvtt_train.data.synthetic import SyntheticConfig

    assert leaves_open(SyntheticConfig(specular=0.5)) and leaves_open(SyntheticConfig(sheen=0.5))
    assert leaves_open(SyntheticConfig(grain=0.3))
    assert not leaves_open(SyntheticConfig())


def test_oracle_rows_need_two_draws(shiny_run):
    teacher, video_encoder, _ = shiny_run
    gates = GateEvaluator(training_data_config(teacher), 2, str(video_encoder), cache_dir=None)
    with pytest.raises(InputError, match="at least 2"):
        oracle_rows(gates, training_data_config(teacher), draws=1)


def test_repeats_score_every_row_under_each_seed_and_hold_the_bars_to_the_mean(tmp_path):
    teacher = load_micro_teacher(tmp_path, steps=2, cfg=1.5)
    _, video_encoder = micro_encoders(tmp_path)
    options = dict(clips=4, step_counts=(1,), video_encoder=str(video_encoder), oracle_draws=0, log=lambda line: None)
    alone = [run_sampler_eval(teacher, [], seed=seed, **options) for seed in (3, 4)]
    both = run_sampler_eval(teacher, [], seed=3, repeats=2, **options)
    assert both["seeds"] == [3, 4] and alone[0]["seeds"] == [3]
    for row, *single in zip(both["rows"], alone[0]["rows"], alone[1]["rows"]):
        by_seed = [r["scores"]["frechet_distance"] for r in single]
        assert row["frechet_by_seed"] == pytest.approx(by_seed, rel=1e-6)  # each seed as a run of its own scores it
        for key in ("frechet_distance", "product_psnr", "background_psnr_raw"):
            assert row["scores"][key] == pytest.approx(sum(r["scores"][key] for r in single) / 2, rel=1e-6)
    assert any(len(set(r["frechet_by_seed"])) == 2 for r in both["rows"])  # the noise moves the distances
    first_bar = both["bars"]["checks"][0]
    assert first_bar["best"] == min(both["rows"], key=lambda r: r["scores"]["frechet_distance"])["name"]
    assert first_bar["best_by_seed"] == [run["bars"]["checks"][0]["best"] for run in alone]
    text = markdown(both)
    assert "mean of sampling seeds 3, 4" in text and "; under each seed: " in text
    low, high = sorted(both["rows"][0]["frechet_by_seed"])
    assert f"| {both['rows'][0]['scores']['frechet_distance']:.3f} ({low:.3f}–{high:.3f}) |" in text
    assert "under each seed" not in markdown(alone[0]) and "mean of sampling seeds" not in markdown(alone[0])


def test_a_repeat_draws_noise_that_no_chunk_of_the_runs_before_drew(tmp_path, monkeypatch):
    import pvtt_train.distill.gates as gates_module

    monkeypatch.setattr(gates_module, "CHUNK", 2)  # 4 clips in two chunks, seeded seed and seed + 1
    teacher = load_micro_teacher(tmp_path, steps=1)
    _, video_encoder = micro_encoders(tmp_path)
    gates = GateEvaluator(training_data_config(teacher), 4, str(video_encoder), cache_dir=None, seed=5)
    seeds = []
    generate = gates_module.generate
    monkeypatch.setattr(gates_module, "generate",
                        lambda loaded, chunk, seed: seeds.append(seed) or generate(loaded, chunk, seed))
    scores = [gates.repeated(r).score(teacher, "teacher")["frechet_distance"] for r in range(3)]
    assert seeds == [5, 6, 7, 8, 9, 10]
    assert gates.seed == 5 and gates.repeated(0).seed == 5
    assert scores[0] == gates.score(teacher, "teacher")["frechet_distance"]  # repeat 0 is the evaluator itself
