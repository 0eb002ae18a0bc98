"""pvtt_accel on the shipped 4-step student: kernels, precision, token merging, INT8 and compile.

Each acceleration must sample what eager fp32 samples, to a stated PSNR, without touching the
model it was given; compile must not recompile between sampling steps.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from pvtt_accel import optional
from pvtt_accel.accelerate import AccelerationOptions, accelerate
from pvtt_accel.attention import choose_backend
from pvtt_accel.compile import compiled_graph_count
from pvtt_accel.denoiser import (
    calibration_batch,
    capture_denoiser_inputs,
    condition_batch,
    get_denoiser,
)
from pvtt_accel.onnx_export import export_denoiser_onnx
from pvtt_accel.ort_backend import ort_accelerate
from pvtt_accel.precision import DtypeAdapter, cast_transformer
from pvtt_accel.tome import tome_attention
from pvtt_accel.wan_processor import decomposed_attention
from pvtt_train.bench import psnr
from pvtt_train.models.loading import load_model
from pvtt_train.paths import SHIPPED_MODELS
from pvtt_train.sampling.samplers import sample_from_metadata

STUDENT = SHIPPED_MODELS / "pvtt_student_4step.safetensors"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def student():
    return load_model(STUDENT)


@pytest.fixture(scope="module")
def clips(student):
    batch = calibration_batch(student, 2, offset=500)
    return condition_batch(student.model, batch)


def sample(loaded, cond) -> torch.Tensor:
    with torch.no_grad():
        x0 = sample_from_metadata(loaded.model, cond, loaded.metadata, None, torch.Generator().manual_seed(3))
        return loaded.model.decode(x0)


@pytest.fixture(scope="module")
def eager_frames(student, clips):
    return sample(student, clips)


def qkv(dtype=torch.float32, tokens=576):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, tokens, 4, 32, generator=g).to(dtype) for _ in range(3)]


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def test_decomposed_attention_matches_sdpa_in_fp32_and_within_bf16_rounding():
    q, k, v = qkv()
    torch.testing.assert_close(decomposed_attention(q, k, v), sdpa(q, k, v), rtol=1e-5, atol=1e-5)
    qb, kb, vb = qkv(torch.bfloat16)
    err = (decomposed_attention(qb, kb, vb).float() - sdpa(q, k, v)).abs().max()
    assert err < 0.03, f"bf16 decomposed attention off by {err}"


def test_auto_attention_on_cpu_depends_on_precision():
    assert choose_backend("auto", CPU, dtype=torch.float32).used == "sdpa"
    assert choose_backend("auto", CPU, dtype=torch.bfloat16).used == "decomposed"


def test_token_merging_at_ratio_zero_is_exact_attention():
    q, k, v = qkv()
    torch.testing.assert_close(tome_attention(q, k, v, 0.0), sdpa(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_merging_duplicate_keys_is_exact_thanks_to_proportional_attention(ratio):
    """Each odd token duplicates its even neighbour: merging any of them loses nothing, and at 0.25
    half the sources stay unmerged, which checks the order of kept tokens against their sizes."""
    q, k, v = qkv()
    k[:, 1::2], v[:, 1::2] = k[:, ::2], v[:, ::2]
    torch.testing.assert_close(tome_attention(q, k, v, ratio), sdpa(q, k, v), rtol=1e-4, atol=1e-5)
    for dtype in (torch.bfloat16,):
        out = tome_attention(q.to(dtype), k.to(dtype), v.to(dtype), 0.5).float()
        assert (out - sdpa(q, k, v)).abs().max() < 0.03


def test_token_merging_ratio_is_checked(student):
    with pytest.raises(ValueError, match=r"tome_ratio must be in \[0, 0.5\]"):
        accelerate(student, AccelerationOptions(tome_ratio=0.7))


def test_bf16_cast_keeps_diffusers_fp32_modules_and_adapter_returns_fp32(student):
    transformer = cast_transformer(get_denoiser(student.model).__class__.from_config(
        get_denoiser(student.model).config), torch.bfloat16)
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert transformer.blocks[0].norm2.weight.dtype == torch.float32  # norm2 has weights (cross_attn_norm)
    assert transformer.scale_shift_table.dtype == torch.float32
    inputs = capture_denoiser_inputs(student)
    out = DtypeAdapter(transformer, torch.bfloat16)(**inputs)[0]
    assert out.dtype == torch.float32 and out.shape[1] == 3


@pytest.mark.parametrize(("options", "min_psnr"), [
    (AccelerationOptions(attention="decomposed"), 90.0),
    (AccelerationOptions(precision="bf16"), 45.0),
    (AccelerationOptions(tome_ratio=0.25), 35.0),
    (AccelerationOptions(int8="w8a16"), 45.0),
    (AccelerationOptions(int8="w8a8"), 40.0),
], ids=lambda o: o.label() if isinstance(o, AccelerationOptions) else str(o))
def test_accelerated_sampling_stays_close_to_eager(student, clips, eager_frames, options, min_psnr):
    fast = accelerate(student, options)
    got = psnr(sample(fast, clips), eager_frames)
    assert got >= min_psnr, f"{options.label()}: {got:.1f} dB against eager fp32"
    assert fast.metadata["acceleration"]["label"] == options.label()


def test_token_merging_changes_the_output(student, clips, eager_frames):
    """ToMe is an approximation; if it matched eager exactly it would not be merging anything."""
    assert psnr(sample(accelerate(student, AccelerationOptions(tome_ratio=0.5)), clips), eager_frames) < 80


def test_acceleration_leaves_the_given_model_untouched(student, clips, eager_frames):
    before = {k: v.clone() for k, v in get_denoiser(student.model).state_dict().items()}
    fast = accelerate(student, AccelerationOptions(precision="bf16", int8="w8a16", tome_ratio=0.25))
    sample(fast, clips)
    after = get_denoiser(student.model).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(get_denoiser(student.model).blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
    assert torch.equal(sample(student, clips), eager_frames)


def test_w8a8_quantises_every_block_linear_after_calibration(student):
    fast = accelerate(student, AccelerationOptions(int8="w8a8", calibration_clips=2))
    blocks = len(get_denoiser(student.model).blocks)
    assert fast.metadata["acceleration"]["int8_layers"] == blocks * 10  # self and cross q k v o, 2 FFN
    linear = get_denoiser(fast.model).blocks[0].attn1.to_q
    assert "int8" in repr(linear.weight).lower() or "Int8" in type(linear.weight).__name__


@pytest.mark.parametrize(("missing", "run"), [
    ("torchao", lambda loaded, tmp: accelerate(loaded, AccelerationOptions(int8="w8a16"))),
    ("onnxruntime", lambda loaded, tmp: ort_accelerate(loaded, tmp)),
    ("onnxscript", lambda loaded, tmp: export_denoiser_onnx(loaded, tmp / "x.onnx")),
])
def test_a_missing_optional_package_says_how_to_install_it(student, monkeypatch, tmp_path, missing, run):
    real = importlib.util.find_spec
    monkeypatch.setattr(optional.importlib.util, "find_spec", lambda name: None if name == missing else real(name))
    with pytest.raises(optional.MissingPackage, match=f"needs {missing}, which is not installed.*pip install {missing}"):
        run(student, tmp_path)
    assert not list(tmp_path.iterdir())


def test_bad_option_names_list_the_choices():
    with pytest.raises(ValueError, match="choose auto or one of sdpa"):
        AccelerationOptions(attention="fastest")
    with pytest.raises(ValueError, match="choose off or one of default"):
        AccelerationOptions(compile="fastest")
    with pytest.raises(ValueError, match="choose one of fp32, bf16, fp16"):
        AccelerationOptions(precision="int4")


needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                    reason="torch.compile on CPU needs a C++ compiler (g++ or clang++)")


@needs_compiler
def test_compiled_student_matches_eager_and_never_recompiles_between_steps(student, clips, eager_frames):
    torch._dynamo.reset()
    fast = accelerate(student, AccelerationOptions(compile="default"))
    before = compiled_graph_count()
    first = sample(fast, clips)
    compiled = compiled_graph_count() - before
    second = sample(fast, clips)
    assert compiled == 1, f"{compiled} graphs for one 4-step sample: a step recompiled"
    assert compiled_graph_count() - before == 1, "the second sample recompiled"
    assert psnr(first, eager_frames) > 60 and torch.equal(first, second)


@needs_compiler
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks oneDNN/MKL op names of x86 CPUs")
def test_compile_freezes_weights_without_touching_inductors_global_config(student, clips):
    import torch._inductor.config as inductor_config
    from torch.profiler import profile

    fast = accelerate(student, AccelerationOptions(compile="default"))
    sample(fast, clips)
    assert inductor_config.freezing is False
    with profile() as prof:
        sample(fast, clips)
    ops = {e.key for e in prof.key_averages()}
    packed = sorted(k for k in ops if k.startswith(("mkldnn::", "mkl::")))
    assert packed and "aten::addmm" not in ops, sorted(ops)  # linears run on weights pre-packed as constants


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: SDPA-flash, GPU INT8 and CUDA compile cannot run on a CPU")


@needs_cuda
@pytest.mark.parametrize("options", [
    AccelerationOptions(),  # fp32 + auto: the flash kernels take half precision only, so auto must pick sdpa
    AccelerationOptions(precision="bf16", attention="sdpa_flash"),
    AccelerationOptions(precision="bf16", attention="auto", compile="default"),
    AccelerationOptions(precision="bf16", int8="w8a16"),
    AccelerationOptions(precision="bf16", int8="w8a8", compile="default"),
], ids=lambda o: o.label())
def test_gpu_paths_match_fp32_eager_on_cuda(options):
    student = load_model(STUDENT, device="cuda")
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in calibration_batch(student, 2, offset=500).items()}
    cond = condition_batch(student.model, batch)
    eager = sample(student, cond)
    fast = accelerate(student, options)
    if options.attention == "sdpa_flash":
        assert fast.metadata["acceleration"]["attention_used"] == "sdpa_flash"
    assert psnr(sample(fast, cond).cpu(), eager.cpu()) >= 35.0


@needs_compiler
def test_every_accelerate_run_compiles_even_past_dynamos_recompile_limit(student, clips):
    """dynamo stops compiling a code object after ``recompile_limit`` graphs and runs it eagerly; with a
    limit of 1, a second accelerated model would silently run eager if models shared an entry point."""
    with torch._dynamo.config.patch(recompile_limit=1):
        for _ in range(2):
            before = compiled_graph_count()
            sample(accelerate(student, AccelerationOptions(compile="default")), clips)
            assert compiled_graph_count() == before + 1


@needs_compiler
def test_compiled_models_in_one_process_each_sample_their_own_weights(student, clips, eager_frames):
    """ComfyUI keeps several models in one process; compiled graphs must never mix their weights."""
    other = load_model(SHIPPED_MODELS / "pvtt_student_8step.safetensors")
    other_eager = sample(other, clips)
    assert psnr(other_eager, eager_frames) < 45  # the two students really differ
    for loaded, own in ((student, eager_frames), (other, other_eager), (student, eager_frames)):
        fast = accelerate(loaded, AccelerationOptions(precision="bf16", compile="default"))
        assert psnr(sample(fast, clips), own) > 50


def test_a_compiler_failure_says_what_to_install_or_switch_off(monkeypatch):
    """Errors raised by dynamo/inductor (not by the model) become CompileFailed with the fix, for every
    caller (node, CLI, bench); a model's own error passes through unchanged."""
    from pvtt_accel.compile import CompiledDenoiser, CompileFailed

    class InductorError(RuntimeError):
        __module__ = "torch._inductor.exc"

    denoiser = CompiledDenoiser(torch.nn.Identity(), {}, freezing=False)

    def fail(**_):
        raise InductorError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(denoiser, "compiled", fail)
    with pytest.raises(CompileFailed, match=r"InductorError: InvalidCxxCompiler.*C\+\+ compiler.*set compile to off"):
        denoiser(x=torch.zeros(1))
    monkeypatch.setattr(denoiser, "compiled", lambda **_: (_ for _ in ()).throw(ValueError("model's own")))
    with pytest.raises(ValueError, match="model's own"):
        denoiser(x=torch.zeros(1))
