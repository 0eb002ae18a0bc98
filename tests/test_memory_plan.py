"""`plan`: parameter counts of the published Wan2.1-VACE sizes, model-state bytes against an independent count,
refusals, an autoguided teacher's guide, the shipped FSDP configs, size parsing, and accelerate's mixed precision
surviving the CLI default."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from pvtt_train.memory_plan import GIB, Planner, Setup, model_spec, parse_size, plan_from_accelerate_yaml
from pvtt_train.models.wan_configs import PUBLISHED_PARAMETERS, TRANSFORMERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planners():
    return {name: Planner(model_spec(name)) for name in TRANSFORMERS}


def independent_parameters(cfg: dict) -> int:
    """Wan-VACE transformer parameters from the config's dimensions alone (no module is built)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn, text, freq = cfg["ffn_dim"], cfg["text_dim"], cfg["freq_dim"]
    patch = cfg["patch_size"][0] * cfg["patch_size"][1] * cfg["patch_size"][2]
    attention = 4 * (d * d + d) + 2 * d  # q, k, v, out with biases; RMS norms of q and k
    block = 2 * attention + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 6 * d  # + cross-attn norm, FFN, modulation
    vace_block = block + 2 * (d * d + d)  # plus before/after projections (before only in the first; counted below)
    vace = len(cfg["vace_layers"]) * vace_block - (len(cfg["vace_layers"]) - 1) * (d * d + d)
    stem = (cfg["in_channels"] * patch * d + d) + (cfg["vace_in_channels"] * patch * d + d)  # patch embeddings
    stem += (freq * d + d) + (d * d + d) + (d * 6 * d + 6 * d)  # time embedding and projection
    stem += (text * d + d) + (d * d + d)  # text embedding
    stem += d * cfg["out_channels"] * patch + cfg["out_channels"] * patch + 2 * d  # output head + its modulation
    return cfg["num_layers"] * block + vace + stem


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_parameter_counts_match_the_published_sizes(planners, name):
    counts = planners[name].counts
    assert counts.trainable == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.01)
    assert counts.trainable == pytest.approx(independent_parameters(TRANSFORMERS[name]), rel=0.001)
    assert counts.vae == pytest.approx(127e6, rel=0.01)
    assert counts.text_encoder == pytest.approx(5.7e9, rel=0.01)


STATE = ("teacher", "student", "critic", "ema", "optimizer_states", "gradients", "working_buffers")


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_model_state_agrees_with_parameters_times_bytes_per_copy(planners, name):
    params = independent_parameters(TRANSFORMERS[name])
    # DDP, 8 GPUs, bf16: teacher 2 + student 4 + critic 4 + EMA 4 + AdamW 2 x 2 x 4 + gradients 2 x 4, twice
    # (DDP buckets) + autocast's bf16 casts of student and critic 2 x 2 bytes per parameter.
    ddp = planners[name].plan(Setup(gpus=8, strategy="ddp"), alternatives=False)
    assert sum(ddp.gpu[k] for k in STATE) == pytest.approx(params * 50, rel=0.10)
    # FSDP, 8 GPUs: everything but the working buffers divided by 8 (38 bytes per parameter in all).
    fsdp = planners[name].plan(Setup(gpus=8, strategy="fsdp", gradient_checkpointing=True), alternatives=False)
    assert sum(fsdp.gpu[k] for k in STATE if k != "working_buffers") == pytest.approx(params * 38 / 8, rel=0.10)
    # The total is never below its parts: activations and the allowance come on top.
    assert fsdp.total > sum(fsdp.gpu[k] for k in STATE)


def test_14b_under_ddp_on_80gb_is_refused_with_settings_that_fit(planners):
    plan = planners["wan2.1-vace-14b"].plan(Setup(gpus=8, gpu_memory=80 * GIB, strategy="ddp",
                                                  gradient_checkpointing=True, pixel_losses=False))
    assert not plan.fits and plan.total > 80 * GIB
    assert plan.gpu["teacher"] + plan.gpu["student"] + plan.gpu["critic"] > 80 * GIB  # the weights alone
    assert plan.alternatives, "a refusal names settings that would fit"
    assert all("FSDP" in name or "GPUs" in name for name, _ in plan.alternatives)
    assert all(total <= 80 * GIB for _, total in plan.alternatives)


def test_gradient_checkpointing_and_pixel_losses_move_the_activations(planners):
    planner = planners["wan2.1-vace-1.3b"]
    base = Setup(gpus=8, strategy="fsdp", pixel_losses=False)
    full = planner.plan(base, alternatives=False).gpu["activations"]
    ckpt = planner.plan(Setup(**{**base.__dict__, "gradient_checkpointing": True}), alternatives=False)
    pixels = planner.plan(Setup(**{**base.__dict__, "gradient_checkpointing": True, "pixel_losses": True}),
                          alternatives=False)
    assert ckpt.gpu["activations"] < full / 5
    assert pixels.gpu["activations"] > 10 * ckpt.gpu["activations"]  # the whole clip decoded with gradients


#: A 6-layer 1.3B: deeper than the 2- and 4-layer probes the fits are made on.
DEEP_PROBE = {"arch": "wan_vace", "context_tokens": 8,
              "transformer": {**TRANSFORMERS["wan2.1-vace-1.3b"], "num_layers": 6, "vace_layers": [0, 2, 4]},
              "vae": {"z_dim": 16, "temperal_downsample": [False, True, True]}}


def _deep_probe():
    """The deep probe's spec, denoiser, model and inputs at 144 tokens (6 x 8 x 12, outside the fitted sizes)."""
    import torch

    from pvtt_train.memory_plan import ModelSpec, _probe_denoiser

    spec = ModelSpec("probe", DEEP_PROBE, {"frames": 81, "height": 480, "width": 832})
    denoiser, built = _probe_denoiser(DEEP_PROBE, 6, torch.bfloat16)
    zeros = {"device": "meta", "dtype": torch.bfloat16}
    kwargs = {"hidden_states": torch.zeros(1, 16, 6, 8, 12, **zeros),
              "control_hidden_states": torch.zeros(1, 96, 6, 8, 12, **zeros),
              "encoder_hidden_states": torch.zeros(1, 8, denoiser.config.text_dim, **zeros),
              "timestep": torch.zeros(1, device="meta"), "return_dict": False}
    return spec, denoiser, built, kwargs


def test_activation_extrapolation_matches_a_direct_meta_count():
    """The two-size, two-depth fit predicts what a deeper probe saves at a larger clip."""
    from pvtt_train.memory_plan import _saved_bytes, measure_activations

    spec, denoiser, built, kwargs = _deep_probe()
    direct = _saved_bytes(lambda: denoiser(**kwargs), list(built.parameters()), (144, 8))
    assert measure_activations(spec, half=True, checkpointing=False).bytes(144) == pytest.approx(direct, rel=0.10)


def _flags(yaml_path: Path) -> list[str]:
    line = next(t for t in yaml_path.read_text().splitlines() if t.startswith("# pvtt plan:"))
    return shlex.split(line.removeprefix("# pvtt plan:"))


@pytest.mark.parametrize("name, config", [("wan2.1-vace-1.3b", "fsdp_wan_1.3b.yaml"),
                                          ("wan2.1-vace-14b", "fsdp_wan_14b.yaml")])
def test_shipped_fsdp_configs_fit_8_gpus_of_80gb(planners, name, config):
    from pvtt_train.__main__ import build_parser

    path = ROOT / "configs" / "accelerate" / config
    args = build_parser().parse_args(["plan", "--model", name, *_flags(path)])
    plan = plan_from_accelerate_yaml(planners[name], path, gradient_checkpointing=args.gradient_checkpointing,
                                     batch_size=args.batch_size, teacher=args.teacher, ema=args.ema,
                                     pixel_losses=not args.no_pixel_losses, gpu_memory=80 * GIB)
    assert plan.setup["gpus"] == 8 and plan.setup["strategy"] == "fsdp" and plan.setup["mixed_precision"] == "bf16"
    assert plan.fits, f"{config}: {plan.total / GIB:.1f} GiB per GPU"


@pytest.mark.parametrize("text, value", [("80GiB", 80 * GIB), ("80GB", 80 * 10**9), ("81920MiB", 80 * GIB),
                                         ("1.5 TiB", int(1.5 * 2**40)), ("1024", 1024)])
def test_sizes_parse(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["eighty", "80XB", "-1GB", "0GiB", ""])
def test_bad_sizes_are_refused_with_an_example(text):
    with pytest.raises(ValueError, match="80GiB"):
        parse_size(text)


def test_plan_cli_prints_a_table_and_refuses_bad_input(capsys):
    from pvtt_train.__main__ import main

    main(["plan", "--model", "wan2.1-vace-1.3b", "--gpus", "8", "--strategy", "fsdp", "--gradient-checkpointing",
          "--no-pixel-losses"])
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| activations |" in out and "**FITS**" in out
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--model", "wan2.1-vace-1.3b", "--gpu-memory", "lots"])
    assert exc.value.code == 2
    assert "80GiB" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_autoguided_teachers_guide_is_planned_as_a_second_frozen_teacher(planners, strategy):
    planner = planners["wan2.1-vace-1.3b"]
    setup = Setup(gpus=8, strategy=strategy, gradient_checkpointing=True)
    plain = planner.plan(setup, alternatives=False)
    guided = planner.plan(replace(setup, guide_parameters=planner.counts.trainable), alternatives=False)
    assert "guide" not in plain.gpu
    assert guided.gpu["guide"] == pytest.approx(plain.gpu["teacher"])  # same size, cast and placement
    assert guided.total > plain.total + plain.gpu["teacher"]  # the guide, and the allowance on it


def test_plan_cli_plans_the_guide_beside_the_teacher(capsys):
    from pvtt_train.__main__ import main

    flags = ["--gpus", "8", "--strategy", "fsdp", "--gradient-checkpointing", "--json"]
    main(["plan", "--model", "wan2.1-vace-14b", *flags])
    plain = json.loads(capsys.readouterr().out)
    main(["plan", "--model", "wan2.1-vace-14b", "--guide-model", "wan2.1-vace-1.3b", *flags])
    guided = json.loads(capsys.readouterr().out)
    assert "guide" not in plain["gpu"]
    assert 0 < guided["gpu"]["guide"] < guided["gpu"]["teacher"] / 5  # a 1.3B guide beside a 14B teacher
    assert guided["total"] > plain["total"] + guided["gpu"]["guide"]


def test_distill_precheck_refuses_14b_here_and_passes_the_shipped_model(monkeypatch):
    from pvtt_train.distill.config import RunConfig, build_stages
    from pvtt_train.errors import InputError
    from pvtt_train.paths import SHIPPED_TEACHER
    from pvtt_train.plan_cli import check_distill_memory

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    stages = build_stages((8, 4), 2)
    run = RunConfig(batch_size=1, mixed_precision="bf16", gradient_checkpointing=True)
    with pytest.raises(InputError, match="Settings that would fit|No single change fits"):
        check_distill_memory("wan2.1-vace-14b", stages, run)
    check_distill_memory(str(SHIPPED_TEACHER), stages, run)  # the embedded model fits anywhere


def test_accelerate_mixed_precision_survives_the_cli_default(monkeypatch, tmp_path):
    """`accelerate launch` passes the YAML's mixed_precision as ACCELERATE_MIXED_PRECISION; the distill
    CLI's default must leave it alone (it used to force 'no')."""
    from accelerate.state import AcceleratorState

    from pvtt_train.__main__ import _progressive_from_args, build_parser
    from pvtt_train.distill.progressive import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    args = build_parser().parse_args(["distill", "--generator-steps", "1"])
    _, run = _progressive_from_args(args)
    AcceleratorState._reset_state(True)
    try:
        assert make_accelerator(run, tmp_path, trackers=False).mixed_precision == "bf16"
        AcceleratorState._reset_state(True)
        explicit = build_parser().parse_args(["distill", "--generator-steps", "1", "--mixed-precision", "no"])
        assert make_accelerator(_progressive_from_args(explicit)[1], tmp_path, trackers=False).mixed_precision == "no"
    finally:
        AcceleratorState._reset_state(True)


def test_plan_defaults_to_the_trainer_as_built_per_strategy(capsys):
    """`plan` without --teacher/--ema plans what distill builds (``trainer_as_built``, the pre-check's setup):
    FSDP shards the bf16 teacher and the EMA (in host RAM with offload); DDP keeps both whole per GPU."""
    import json

    from pvtt_train.__main__ import main

    def setup(*flags):
        main(["plan", "--model", "wan2.1-vace-1.3b", "--gpus", "8", "--gradient-checkpointing", "--no-pixel-losses",
              "--json", *flags])
        plan = json.loads(capsys.readouterr().out)
        return plan, {k: plan["setup"][k] for k in ("teacher", "teacher_half", "ema")}

    fsdp, built = setup("--strategy", "fsdp")
    assert built == {"teacher": "sharded", "teacher_half": True, "ema": "sharded"} and fsdp["fits"]
    assert fsdp["gpu"]["teacher"] == pytest.approx(2 * fsdp["parameters"]["trainable"] / 8, rel=0.01)
    assert fsdp["gpu"]["ema"] == pytest.approx(4 * fsdp["parameters"]["trainable"] / 8, rel=0.01)
    assert fsdp["gpu"]["vae"] == 4 * fsdp["parameters"]["vae"]  # one shared fp32 VAE
    assert setup("--strategy", "fsdp", "--offload")[1]["ema"] == "cpu"
    assert setup("--strategy", "ddp")[1] == {"teacher": "replicated", "teacher_half": True, "ema": "replicated"}
    assert setup("--strategy", "ddp", "--mixed-precision", "no")[1]["teacher_half"] is False


def test_discriminator_extrapolation_matches_a_direct_meta_count():
    """The discriminator's fit (critic cut after the head's block, and the head) predicts a deeper probe's count."""
    import torch

    from pvtt_train.distill.adversarial import DiscriminatorHead, tokens_after
    from pvtt_train.memory_plan import _saved_bytes, measure_discriminator_activations

    spec, denoiser, built, kwargs = _deep_probe()
    with torch.device("meta"):
        head = DiscriminatorHead.for_critic(built)  # reads block 3 of 6, after all three VACE blocks
    direct = _saved_bytes(lambda: head(tokens_after(denoiser.blocks[head.block], lambda: denoiser(**kwargs))),
                          list(built.parameters()), (144, 8))
    model = measure_discriminator_activations(spec, half=True, checkpointing=False)
    assert model.bytes(144) == pytest.approx(direct, rel=0.10)
    whole = _saved_bytes(lambda: denoiser(**kwargs), list(built.parameters()), (144, 8))
    assert 0.5 * whole < direct < 0.9 * whole  # 7 of 9 blocks run, the output head does not


def test_the_adversarial_loss_adds_its_head_and_the_critics_larger_step(planners):
    planner = planners["wan2.1-vace-1.3b"]
    base = Setup(gpus=8, strategy="fsdp", gradient_checkpointing=True, pixel_losses=False, regression=False)
    plain = planner.plan(base, alternatives=False)
    adversarial = planner.plan(replace(base, discriminator_inputs=3), alternatives=False)
    assert "discriminator" not in plain.gpu
    assert adversarial.gpu["discriminator"] == 16 * planner.counts.discriminator_head  # fp32 weight, grad, AdamW
    one_call = planner.activations(True, True).bytes(plain.tokens)
    cut = planner.discriminator(True, True).bytes(plain.tokens)
    assert 0.5 * one_call < cut < one_call  # the critic up to its middle main block, after every VACE block
    # Without the regression loss the critic's step is the larger: its graph and three cut ones at once.
    assert adversarial.gpu["activations"] - plain.gpu["activations"] == pytest.approx(3 * cut, rel=0.01)
    between = (plain.total + adversarial.total) // 2
    refused = planner.plan(replace(base, discriminator_inputs=3, gpu_memory=between))
    assert not refused.fits and "no adversarial loss" in [name for name, _ in refused.alternatives]


def test_distill_precheck_plans_the_adversarial_loss(monkeypatch):
    from pvtt_train import plan_cli
    from pvtt_train.distill.config import RunConfig, build_stages
    from pvtt_train.errors import InputError

    run = RunConfig(batch_size=1, mixed_precision="bf16", gradient_checkpointing=True)
    plain, adversarial = build_stages((8, 4), 2), build_stages((8, 4), 2, adversarial=True)
    assert plan_cli.discriminator_inputs(plain) == 0 and plan_cli.discriminator_inputs(adversarial) == 3
    planner = Planner(model_spec("wan2.1-vace-1.3b"))
    setup = Setup(gpus=1, strategy="ddp", gradient_checkpointing=True, batch_size=1)
    between = (planner.plan(setup, alternatives=False).total
               + planner.plan(replace(setup, discriminator_inputs=3), alternatives=False).total) // 2
    monkeypatch.setattr(plan_cli, "distributed_setup",
                        lambda: {"gpus": 1, "strategy": "ddp", "offload": False, "gpu_memory": between})
    plan_cli.check_distill_memory("wan2.1-vace-1.3b", plain, run)
    with pytest.raises(InputError, match="no adversarial loss"):
        plan_cli.check_distill_memory("wan2.1-vace-1.3b", adversarial, run)


def test_plan_cli_plans_the_adversarial_loss(capsys):
    from pvtt_train.__main__ import main

    flags = ["--model", "wan2.1-vace-1.3b", "--gpus", "8", "--strategy", "fsdp", "--gradient-checkpointing"]
    main(["plan", *flags])
    assert "| discriminator |" not in capsys.readouterr().out
    main(["plan", *flags, "--adversarial"])
    out = capsys.readouterr().out
    assert "| discriminator |" in out and "discriminator batch 3 clips per sample" in out


def test_encoder_estimate_matches_a_direct_meta_count():
    """The perceptual loss's VAE-encoder graph, fitted per pixel-frame, predicts another clip size's count."""
    import torch
    from diffusers import AutoencoderKLWan

    from pvtt_train.memory_plan import _saved_bytes, measure_encoder_activations

    spec = model_spec("wan2.1-vace-1.3b")
    per_pixel_frame = measure_encoder_activations(spec, half=True)
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(spec.config["vae"]).to(torch.bfloat16)
    x = torch.zeros(1, 3, 13, 64, 96, device="meta", dtype=torch.bfloat16, requires_grad=True)
    direct = _saved_bytes(lambda: vae.encode(x).latent_dist.mode(), list(vae.parameters()), ())
    assert per_pixel_frame * 13 * 64 * 96 == pytest.approx(direct, rel=0.10)


def test_the_perceptual_loss_adds_a_second_decode_and_its_encoder(planners):
    planner = planners["wan2.1-vace-1.3b"]
    base = Setup(gpus=8, strategy="fsdp", gradient_checkpointing=True, frames=17, height=240, width=416)
    pixel_frames = 17 * 240 * 416
    plain = planner.plan(base, alternatives=False)
    perceptual = planner.plan(replace(base, perceptual=True), alternatives=False)
    added = (planner.decoder(True) + planner.encoder(True)) * pixel_frames
    assert perceptual.gpu["activations"] - plain.gpu["activations"] == pytest.approx(added, rel=0.01)
    assert added > plain.gpu["activations"]  # more than everything else the step holds at this size
    # Its regression call runs even where the regression loss is weighted 0.
    alone = planner.plan(replace(base, regression=False, pixel_losses=False, perceptual=True), alternatives=False)
    none = planner.plan(replace(base, regression=False, pixel_losses=False), alternatives=False)
    assert alone.gpu["activations"] - none.gpu["activations"] == pytest.approx(
        added + planner.activations(True, True).bytes(none.tokens), rel=0.01)


def test_distill_precheck_plans_the_optional_losses_its_stages_use(monkeypatch):
    from pvtt_train import memory_plan, plan_cli
    from pvtt_train.distill.config import DEFAULT_WEIGHTS, RunConfig, build_stages

    planned = []
    original = memory_plan.Planner.plan
    monkeypatch.setattr(memory_plan.Planner, "plan",
                        lambda self, setup, alternatives=True: planned.append(setup) or original(self, setup, False))
    monkeypatch.setattr(plan_cli, "distributed_setup",
                        lambda: {"gpus": 1, "strategy": "ddp", "offload": False, "gpu_memory": 1 << 50})
    run = RunConfig(batch_size=1)
    no_pixels = {**DEFAULT_WEIGHTS, "temporal": (0.0, 0), "identity": (0.0, 0)}
    for stages in (build_stages((8, 4), 2), build_stages((8, 4), 2, perceptual=True, adversarial=True),
                   build_stages((8, 4), 2, perceptual=True, weights=no_pixels)):
        plan_cli.check_distill_memory("wan2.1-vace-1.3b", stages, run)
    assert [(s.pixel_losses, s.perceptual, s.discriminator_inputs) for s in planned] == \
        [(True, False, 0), (True, True, 3), (False, True, 0)]


@pytest.mark.parametrize("model, flags, named", [
    ("wan2.1-vace-1.3b", ["--frames", "80"], "Use 77 or 81 frames"),
    ("wan2.1-vace-1.3b", ["--height", "24"], "must be a multiple of 16x16"),
    (None, ["--width", "17"], "multiple of the transformer patch 1 x 2 x 2"),
])
def test_plan_cli_refuses_a_clip_the_model_cannot_take(capsys, model, flags, named):
    """Training would refuse the clip (or crop it silently): the plan is not made for it."""
    from pvtt_train.__main__ import main
    from pvtt_train.paths import SHIPPED_TEACHER

    with pytest.raises(SystemExit) as exc:
        main(["plan", "--model", model or str(SHIPPED_TEACHER), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--frames/--height/--width" in err and named in err
