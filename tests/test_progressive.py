"""Progressive distillation on a micro teacher: stage configs, gates, the regression and temporal
losses, stage training mechanics, exports and resume."""

import json
from dataclasses import replace

import pytest
import torch
from _tiny import load_micro_teacher, micro_encoders, micro_teacher

from pvtt_train.data.batches import heldout_batch
from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill.config import (
    DEFAULT_WEIGHTS,
    LOSS_SETS,
    GateConfig,
    RunConfig,
    StageConfig,
    build_stages,
    check_config,
)
from pvtt_train.distill.gates import GateFailed, check_gate
from pvtt_train.distill.progressive import make_accelerator, run_progressive
from pvtt_train.distill.regression import TrajectoryCache, ode_grid
from pvtt_train.distill.temporal import FlowCache, noise_weight, temporal_loss
from pvtt_train.distill.trainer import DistillationAborted, StageInputs, train_stage
from pvtt_train.models.checkpoint import file_sha256, load_checkpoint, read_metadata
from pvtt_train.sampling.samplers import sample_teacher

# --- configuration ------------------------------------------------------------------------------

def test_default_path_is_16_8_4_with_its_loss_sets_rates_and_gates():
    stages = build_stages("default")
    assert [s.steps for s in stages] == [16, 8, 4]
    assert [s.role for s in stages] == ["first", "middle", "last"]
    assert stages[0].losses == ("dmd", "regression", "temporal")
    assert set(stages[1].losses) == set(stages[0].losses) | {"background", "identity"}
    assert stages[2].losses == LOSS_SETS["last"]
    assert [s.lr_student for s in stages] == pytest.approx([4e-5, 2e-5, 4e-6])
    assert stages[0].gate == GateConfig("teacher", 1.15)
    assert stages[1].gate == GateConfig("previous", 1.10, 35.0)
    assert stages[2].gate == GateConfig("teacher", 1.15)  # issue 14's bar for the 4-step student
    assert stages[1].timesteps == (1000, 875, 750, 625, 500, 375, 250, 125)


def test_gentle_path_and_optional_losses():
    stages = build_stages("gentle", adversarial=True, perceptual=True)
    assert [s.steps for s in stages] == [25, 12, 6, 4]
    assert [s.role for s in stages] == ["first", "middle", "middle", "last"]
    assert "adversarial" in stages[-1].losses and "perceptual" in stages[-1].losses
    assert all("adversarial" not in s.losses for s in stages[:-1])


def test_bad_paths_and_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="decreasing list"):
        build_stages((4, 8))
    with pytest.raises(ValueError, match="strictly decreasing .* own student file"):
        build_stages((8, 8, 4))
    with pytest.raises(ValueError, match="one per stage"):
        build_stages((8, 4), (10, 10, 10))
    with pytest.raises(ValueError, match="unknown losses"):
        check_config([replace(StageConfig(), losses=("dmd", "lpips"))], RunConfig())
    with pytest.raises(ValueError, match="cannot be left out"):
        check_config([replace(StageConfig(), losses=("regression",))], RunConfig())


def test_loss_weight_warms_up_linearly_and_is_zero_outside_the_set():
    stage = StageConfig(losses=("dmd", "temporal"), weights={**DEFAULT_WEIGHTS, "temporal": (0.2, 4)})
    assert [stage.weight("temporal", g) for g in range(5)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    assert stage.weight("dmd", 0) == 1.0
    assert stage.weight("identity", 100) == 0.0


def test_gate_compares_against_the_teacher_or_the_previous_stage():
    teacher, previous = {"frechet_distance": 1.0}, {"frechet_distance": 2.0}
    ok = check_gate(GateConfig("teacher", 1.15), {"frechet_distance": 1.1}, teacher, None)
    assert ok["passed"] and ok["checks"][0]["limit"] == pytest.approx(1.15)
    fail = check_gate(GateConfig("previous", 1.10, 35.0), {"frechet_distance": 2.1, "background_psnr_raw": 34.0},
                      teacher, previous)
    assert not fail["passed"]
    assert [c["passed"] for c in fail["checks"]] == [True, False]
    assert "34.0000 (limit 35.0000)" in str(GateFailed("s", fail))


@pytest.mark.parametrize("teacher_background, student_background, limit, passed", [
    (40.0, 34.9, 35.0, False),  # a teacher that clears the floor keeps it
    (33.5, 33.2, 33.0, True),  # one that misses it: the student is held to the teacher's own less 0.5 dB
    (33.5, 32.9, 33.0, False),
    (35.2, 34.8, 34.7, True),  # the floor never rises above the teacher's own less 0.5 dB
])
def test_the_background_floor_follows_a_teacher_near_or_under_it(teacher_background, student_background, limit,
                                                                passed):
    teacher = {"frechet_distance": 1.0, "background_psnr_raw": teacher_background}
    gate = check_gate(GateConfig("previous", 1.10, 35.0), {"frechet_distance": 1.0,
                                                          "background_psnr_raw": student_background},
                      teacher, {"frechet_distance": 1.0})
    background = gate["checks"][1]
    assert background["limit"] == pytest.approx(limit) and background["passed"] is passed
    assert gate["passed"] is passed


# --- losses ---------------------------------------------------------------------------------------

def test_ode_grid_passes_through_every_cached_sigma():
    grid = ode_grid([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], [1.0, 0.75, 0.5, 0.2000000001])
    sigmas = [s for s, _ in grid]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[-1] == 0.0
    assert {slot for _, slot in grid if slot is not None} == {0, 1, 2, 3}
    assert 0.75 in sigmas and 0.5 in sigmas and sum(abs(s - 0.2) < 1e-6 for s in sigmas) == 1


@pytest.fixture()
def teacher(tmp_path):
    return load_micro_teacher(tmp_path, steps=4)


def test_teacher_cfg_below_one_reaches_every_stage_and_the_default_is_the_teachers():
    """`--teacher-cfg` may lean DMD's real score towards the unconditional branch (0 <= cfg < 1)."""
    from pvtt_train.__main__ import _progressive_from_args, build_parser

    stages, _ = _progressive_from_args(build_parser().parse_args(["distill", "--teacher-cfg", "0.6"]))
    assert [s.teacher_cfg for s in stages] == [0.6, 0.6, 0.6]
    stages, _ = _progressive_from_args(build_parser().parse_args(["distill"]))
    assert [s.teacher_cfg for s in stages] == [None, None, None]


def test_cached_trajectory_is_the_teacher_sampler(teacher, tmp_path):
    """With the student sigmas on the teacher's grid, the cached x0 is exactly the Euler sampler's."""
    scheduler = teacher.schedule.euler_scheduler()
    scheduler.set_timesteps(4)
    on_grid = [float(scheduler.sigmas[0]), float(scheduler.sigmas[2])]
    cache = TrajectoryCache(tmp_path / "c", teacher, SyntheticConfig(), on_grid, cfg=1.5, pool=2, chunk=2)
    cache.ensure()
    batch = cache.sample(1, on_grid, torch.Generator().manual_seed(0))
    assert batch["x_t"].shape == batch["x0_teacher"].shape == (1, 3, 9, 16, 16)
    seeds = cache.seeds[:2]
    from pvtt_train.data.batches import condition_batch, make_batch
    from pvtt_train.data.synthetic import SyntheticVideoGenerator

    clips = make_batch(SyntheticVideoGenerator(SyntheticConfig()), seeds)
    cond = condition_batch(teacher.model, clips)
    expected = sample_teacher(teacher.model, cond, teacher.schedule, 4, 1.5, torch.Generator().manual_seed(seeds[0]))
    assert torch.allclose(cache._x0, expected, atol=1e-5)


def test_trajectory_generation_resumes_chunk_by_chunk(teacher, tmp_path):
    cache = TrajectoryCache(tmp_path / "c", teacher, SyntheticConfig(), [1.0, 0.5], cfg=1.5, pool=4, chunk=2).ensure()
    first, second = cache._chunk_path(0), cache._chunk_path(1)
    stamp = first.stat().st_mtime_ns
    second.write_bytes(second.read_bytes()[:100])  # a generation killed mid-write of chunk 2
    again = TrajectoryCache(tmp_path / "c", teacher, SyntheticConfig(), [1.0, 0.5], cfg=1.5, pool=4, chunk=2)
    again.ensure()
    assert first.stat().st_mtime_ns == stamp
    assert torch.equal(again._x0, cache._x0)
    other = TrajectoryCache(tmp_path / "c", teacher, SyntheticConfig(), [1.0, 0.25], cfg=1.5, pool=4, chunk=2)
    assert other.folder != cache.folder


def test_temporal_loss_is_zero_for_motion_that_follows_the_flow():
    video = torch.rand(1, 3, 8, 8, 3)
    shifted = torch.roll(video[:, :1], shifts=1, dims=3)  # frame 1 = frame 0 moved one pixel right
    clip = torch.cat([video[:, :1], shifted, torch.roll(shifted, 1, dims=3)], 1)
    flows = torch.zeros(1, 2, 8, 8, 2)
    flows[..., 0] = -1.0  # backward flow: pixel x in frame t+1 came from x-1 in frame t
    mask = torch.ones(1, 3, 8, 8)
    mask[..., 0] = 0  # the wrapped-around column
    follows = temporal_loss(clip, flows, mask, torch.tensor([0.0]))
    static = temporal_loss(clip, torch.zeros_like(flows), mask, torch.tensor([0.0]))
    assert follows.item() < 1e-10 < static.item()
    assert temporal_loss(clip, torch.zeros_like(flows), mask, torch.tensor([1.0])).item() == pytest.approx(
        0.1 * static.item())
    assert noise_weight(torch.tensor([0.25])).item() == pytest.approx(0.75)


def test_flow_cache_computes_each_clip_once():
    batch = heldout_batch(SyntheticConfig(), 2)
    cache = FlowCache()
    a = cache.flows(batch)
    b = cache.flows(batch)
    assert cache.computed == 2 and torch.equal(a, b) and a.shape == (2, 8, 16, 16, 2)


# --- stage training --------------------------------------------------------------------------------

def _inputs(teacher, tmp_path, stage):
    identity, _ = micro_encoders(tmp_path)
    from pvtt_train.identity.encoder import load_identity_encoder

    cache = TrajectoryCache(tmp_path / "cache", teacher, SyntheticConfig(), teacher.schedule.student_sigmas(
        stage.timesteps), cfg=1.5, pool=2, chunk=2).ensure()
    return StageInputs(teacher=teacher, real=teacher.model, real_cfg=1.5, student_init=teacher.model,
                       critic_init=teacher.model, data=SyntheticConfig(), trajectories=cache,
                       identity=load_identity_encoder(identity))


def _stage(**kw):
    base = StageConfig(name="s", timesteps=(1000, 500), generator_steps=2, critic_ratio=2, lr_student=1e-4,
                       losses=LOSS_SETS["last"])
    return replace(base, **kw)


def test_stage_counts_the_critic_ratio_in_optimizer_steps_and_logs_every_loss(teacher, tmp_path):
    stage = _stage()
    run = RunConfig(batch_size=1, grad_accumulation=2, log_every=1, ema_decay=0)
    acc = make_accelerator(run, tmp_path, trackers=False)
    result = train_stage(acc, _inputs(teacher, tmp_path, stage), stage, run, tmp_path / "state", False,
                         tmp_path / "log.jsonl", progress=False)
    assert result.stats["generator_steps"] == 2
    assert result.stats["iterations"] == 4  # 2 critic steps per student step, whatever the accumulation
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["g_step"] for r in rows] == [1, 2]
    for loss in stage.losses:
        assert rows[-1][f"loss_{loss}"] >= 0
    for key in ("dmd_grad_norm", "student_grad_norm", "critic_grad_norm", "real_x0_std", "fake_x0_std", "x0_std",
                "exit_step", "score_sigma", "lr_student", "step_seconds"):
        assert key in rows[-1]
    from pvtt_train.distill.state import load_state, state_files

    # 4 iterations x 2 micro-batches x batch 1 clips consumed.
    assert load_state(state_files(tmp_path / "state")[-1])["stream_position"] == 8
    changed = any(not torch.equal(a, b) for a, b in zip(result.student.state_dict().values(),
                                                         teacher.model.state_dict().values()))
    assert changed


def test_optional_adversarial_and_perceptual_losses_train_and_log(teacher, tmp_path):
    from pvtt_train.distill.perceptual import PerceptualLoss

    stage = _stage(generator_steps=1, losses=LOSS_SETS["last"] + ("adversarial", "perceptual"))
    run = RunConfig(batch_size=1, log_every=1)
    inputs = replace(_inputs(teacher, tmp_path, stage), perceptual=PerceptualLoss())
    train_stage(make_accelerator(run, tmp_path, trackers=False), inputs, stage, run, None, False,
                tmp_path / "log.jsonl", progress=False)
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert row["loss_adversarial"] > 0 and row["loss_perceptual"] >= 0 and row["loss_d"] > 0
    assert row["weighted_adversarial"] == pytest.approx(0.01 / 20 * row["loss_adversarial"], abs=1e-6)  # warm-up


def test_stage_aborts_after_repeated_nonfinite_losses(teacher, tmp_path):
    inputs = _inputs(teacher, tmp_path, _stage())
    broken = load_micro_teacher(tmp_path / "b").model
    for p in broken.parameters():
        p.data.fill_(float("nan"))
    inputs = replace(inputs, student_init=broken)
    run = RunConfig(batch_size=1, max_nonfinite=2)
    with pytest.raises(DistillationAborted, match="NaN/Inf 2 times in a row"):
        train_stage(make_accelerator(run, tmp_path, trackers=False), inputs, _stage(losses=("dmd",), generator_steps=5,
                    critic_ratio=1), run, None, False, tmp_path / "log.jsonl", progress=False)


def test_stage_resume_continues_exactly_where_it_stopped(teacher, tmp_path, monkeypatch):
    stage = _stage(generator_steps=4)
    run = RunConfig(batch_size=1, save_every=2)
    inputs = _inputs(teacher, tmp_path, stage)
    acc = make_accelerator(run, tmp_path, trackers=False)
    straight = train_stage(acc, inputs, stage, run, tmp_path / "s1", False, tmp_path / "a.jsonl", progress=False)

    from pvtt_train.distill import trainer

    real_save = trainer.save_state

    def save_then_crash(folder, step, state, keep):
        real_save(folder, step, state, keep)
        raise KeyboardInterrupt("killed right after the step-2 state")

    monkeypatch.setattr(trainer, "save_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_stage(acc, inputs, stage, run, tmp_path / "s2", False, tmp_path / "b.jsonl", progress=False)
    monkeypatch.setattr(trainer, "save_state", real_save)
    resumed = train_stage(acc, inputs, stage, run, tmp_path / "s2", True, tmp_path / "b.jsonl", progress=False)
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.stats["generator_steps"] == 4

    from pvtt_train.errors import CheckpointError

    with pytest.raises(CheckpointError, match="other settings: --lr-student/--lr-scale: 0.0001 in the saved run, "
                                              "0.001 now; resume with the same options"):
        train_stage(acc, inputs, replace(stage, lr_student=1e-3), run, tmp_path / "s2", True, tmp_path / "c.jsonl",
                    progress=False)


# --- the progressive run -------------------------------------------------------------------------------

def _micro_run(tmp_path, **kw):
    identity, video = micro_encoders(tmp_path)
    base = RunConfig(batch_size=1, regression_pool=2, eval_clips=4, save_every=2, identity_encoder=str(identity),
                     video_encoder=str(video))
    return replace(base, **kw)


def _lenient(stages, ratio=1e6):
    return [replace(s, critic_ratio=2, gate=replace(s.gate, ratio=ratio, min_background_psnr=None)) for s in stages]


def test_progressive_run_exports_every_stage_self_described(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    stages = _lenient(build_stages((4, 2), 2))
    result = run_progressive(teacher, stages, _micro_run(tmp_path), tmp_path / "run", tmp_path / "models",
                             progress=False)
    assert [s["name"] for s in result["stages"]] == ["student_4step", "student_2step"]
    for entry, steps in zip(result["stages"], (4, 2)):
        path = tmp_path / "models" / f"pvtt_student_{steps}step.safetensors"
        meta = read_metadata(path)
        timesteps = list(stages[2 - steps // 2].timesteps)
        assert meta["sampler"] == {"kind": "few_step", "steps": steps, "timesteps": timesteps}
        assert meta["stage"] == entry["name"] and meta["schedule"]["shift"] == 1.0
        assert meta["provenance"]["teacher_sha256"] == file_sha256(teacher)
        assert meta["gate"]["passed"] and meta["gate"]["scores"]["frechet_distance"] >= 0
        assert (tmp_path / "run" / f"{entry['name']}_strip.png").stat().st_size > 500
        load_checkpoint(path)
    assert result["teacher"]["frechet_distance"] >= 0


def test_a_failed_gate_stops_the_run_unless_forced(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    stages = _lenient(build_stages((4, 2), 1), ratio=0.0)  # nothing passes a zero limit
    run = _micro_run(tmp_path)
    with pytest.raises(GateFailed, match="student_4step failed its gate"):
        run_progressive(teacher, stages, run, tmp_path / "run", tmp_path / "models", progress=False)
    assert not (tmp_path / "models" / "pvtt_student_4step.safetensors").exists()
    assert (tmp_path / "run" / "failed" / "pvtt_student_4step.safetensors").exists()
    forced = run_progressive(teacher, stages, replace(run, force=True), tmp_path / "run2", tmp_path / "models",
                             progress=False)
    assert [s["gate"]["forced"] for s in forced["stages"]] == [True, True]
    assert (tmp_path / "models" / "pvtt_student_2step.safetensors").exists()


def test_resume_skips_finished_stages_and_refuses_other_options(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    stages = _lenient(build_stages((4, 2), 1))
    run = _micro_run(tmp_path)
    run_progressive(teacher, stages, run, tmp_path / "run", tmp_path / "models", progress=False)
    first = tmp_path / "models" / "pvtt_student_4step.safetensors"
    stamp = first.stat().st_mtime_ns
    again = run_progressive(teacher, stages, run, tmp_path / "run", tmp_path / "models", resume=True, progress=False)
    assert first.stat().st_mtime_ns == stamp and len(again["stages"]) == 2
    from pvtt_train.errors import CheckpointError

    with pytest.raises(CheckpointError, match="other settings: --batch-size: 1 in the saved run, 2 now; resume"):
        run_progressive(teacher, stages, replace(run, batch_size=2), tmp_path / "run", tmp_path / "models",
                        resume=True, progress=False)


def test_resume_says_when_there_is_nothing_to_resume_and_refuses_a_damaged_progress_file(tmp_path, capsys):
    from pvtt_train.errors import CheckpointError

    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    stages = _lenient(build_stages((2,), 1))
    run = _micro_run(tmp_path)
    run_progressive(teacher, stages, run, tmp_path / "run", tmp_path / "models", resume=True, progress=False)
    assert f"--resume: nothing saved in {tmp_path / 'run'} yet" in capsys.readouterr().out
    progress = tmp_path / "run" / "progress.json"
    progress.write_text(progress.read_text()[:40])  # damaged after it was written
    with pytest.raises(CheckpointError, match="progress.json is damaged .* to resume from the training states"):
        run_progressive(teacher, stages, run, tmp_path / "run", tmp_path / "models", resume=True, progress=False)


def test_accelerate_configs_parse_and_wrap_real_wan_block_classes():
    from pathlib import Path

    import diffusers.models.transformers.transformer_wan as wan
    import diffusers.models.transformers.transformer_wan_vace as wan_vace
    import yaml

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    configs = {p.name: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")}
    assert {"ddp_multi_gpu.yaml", "fsdp_wan.yaml", "multi_node_ddp.yaml"} <= set(configs)
    wrapped = configs["fsdp_wan.yaml"]["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert all(hasattr(wan, name) or hasattr(wan_vace, name) for name in wrapped)
    assert configs["multi_node_ddp.yaml"]["num_machines"] == 2


def test_critic_init_keep_hands_the_critic_to_the_next_stage(tmp_path, monkeypatch):
    from pvtt_train.distill import progressive

    seen = []
    real_train = progressive.train_stage

    def recording(acc, inputs, stage, *args, **kw):
        result = real_train(acc, inputs, stage, *args, **kw)
        seen.append((stage.name, inputs.critic_init, result.critic))
        return result

    monkeypatch.setattr(progressive, "train_stage", recording)
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    stages = _lenient(build_stages((4, 2), 1))
    stages[1] = replace(stages[1], critic_init="keep")
    run_progressive(teacher, stages, _micro_run(tmp_path), tmp_path / "run", tmp_path / "models", progress=False)
    (_, first_init, first_critic), (_, second_init, _) = seen
    assert second_init is first_critic and first_init is not first_critic
