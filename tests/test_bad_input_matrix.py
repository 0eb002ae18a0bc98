"""The bad-input matrix: every PVTT node against the inputs designers actually feed it.

Each refusal case runs the node the way ComfyUI does (``VALIDATE_INPUTS`` first, then its FUNCTION)
and asserts that the error names the problem AND the fix. Cases where the odd input is valid run
and assert what comes out (shape, range, equality with the clean input), so an input is never
silently turned into a wrong clip. File cases (missing, corrupt, truncated, traversal, pickles,
wrong checkpoints) use real files written into the test's own folders.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from _comfy_pack import PACKAGE
from _media_files import feathered_disk, flip_idat_bit, gradient_png, png_bomb, write_raw_mjpeg
from _node_fixtures import TINY_NAME, nodes, outputs, run

errors = importlib.import_module(f"{PACKAGE}.pvtt_train.errors")
validation = importlib.import_module(f"{PACKAGE}.pvtt_train.validation")
video_io = importlib.import_module(f"{PACKAGE}.pvtt_train.media.video_io")
image_decode = importlib.import_module(f"{PACKAGE}.pvtt_train.media.image_decode")
checkpoint = importlib.import_module(f"{PACKAGE}.pvtt_train.models.checkpoint")
pvtt_model = importlib.import_module(f"{PACKAGE}.pvtt_train.models.pvtt_model")
optional = importlib.import_module(f"{PACKAGE}.pvtt_accel.optional")
onnx_export = importlib.import_module(f"{PACKAGE}.pvtt_accel.onnx_export")
tensorrt_engine = importlib.import_module(f"{PACKAGE}.pvtt_accel.tensorrt_engine")

FRAMES, H, W = 9, 24, 20  # not the model's 16x16: every clip goes through the resize path


class ValidationFailed(Exception):
    """What ComfyUI reports when a node's VALIDATE_INPUTS returns a message instead of True."""


def execute(node_id: str, **inputs):
    """VALIDATE_INPUTS (with the inputs it names), then the node's FUNCTION: ComfyUI's order."""
    cls = nodes[node_id]
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    if validate is not None:
        names = validate.__code__.co_varnames[1:validate.__code__.co_argcount]
        verdict = validate(**{k: v for k, v in inputs.items() if k in names})
        if verdict is not True:
            raise ValidationFailed(verdict)
    return run(node_id, **inputs)


# --- inputs -------------------------------------------------------------------------------------

def clip(frames=FRAMES, height=H, width=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, height, width, 3, generator=g) * 0.6 + 0.2


def box(frames=FRAMES, height=H, width=W):
    mask = torch.zeros(frames, height, width)
    mask[:, height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1
    return mask


def photo():
    image = torch.ones(1, 32, 32, 3) * 0.9
    image[:, 8:24, 10:22] = torch.tensor([0.8, 0.2, 0.1])
    return image


def with_value(t, index, value):
    t = t.clone()
    t.view(-1)[index] = value
    return t


#: Bad IMAGEs: (case id, make(video) -> bad tensor, problem regex, fix regex).
BAD_IMAGES = [
    ("mask-instead-of-image", lambda v: v[..., 0], r"which is a MASK", r"connect the IMAGE output|Convert Mask to Image"),
    ("rgba", lambda v: torch.cat([v, torch.ones_like(v[..., :1])], -1), r"4 channels \(RGBA\)",
     r"drop the alpha channel"),
    ("channels-first", lambda v: v.permute(0, 3, 1, 2), r"channels", r"channels last|connect"),
    ("zero-frames", lambda v: v[:0], r"0 frames", r"at least one frame"),
    ("nan-frame", lambda v: with_value(v, 7, float("nan")), r"1 NaN or Inf values \(frames 0\)",
     r"check the node that produced it"),
    ("inf-frame", lambda v: with_value(v, v.numel() - 1, float("inf")), r"NaN or Inf values \(frames (8|0)\)",
     r"check the node that produced it"),
    ("0-255-float", lambda v: v * 255, r"values .*\.\..*255|values 51", r"divide by 255"),
    ("uint8-0-255", lambda v: (v * 255).to(torch.uint8), r"ComfyUI images and masks hold 0\.\.1", r"divide by 255"),
    ("minus1-1", lambda v: v * 2 - 1, r"values -0\.\d+\.\.0\.\d+", r"\(x \+ 1\) / 2"),
    ("float64-1e300", lambda v: with_value(v.double(), 5, 1e300), r"values 0\.\d+\.\.1e\+300, out of range",
     r"rescale it to 0\.\.1"),
    ("far-negative", lambda v: with_value(v, 5, -5.0), r"values -5\.\.0\.\d+, out of range", r"rescale it to 0\.\.1"),
    ("complex-dtype", lambda v: v.to(torch.complex64), r"dtype torch\.complex64", r"connect"),
    ("1d", lambda v: v.flatten(), r"must be an IMAGE batch", r"connect PVTT Load Video"),
]

#: Bad MASKs for nodes that take a mask made for a video.
BAD_MASKS = [
    ("image-instead-of-mask", lambda m: m[..., None].expand(-1, -1, -1, 3), r"which is an IMAGE, not a MASK",
     r"Convert Image to Mask"),
    ("nan", lambda m: with_value(m, 3, float("nan")), r"NaN or Inf", r"check the node that produced it"),
    ("0-255", lambda m: m * 255, r"values 0\.\.255", r"divide by 255"),
    ("bytes-0-255", lambda m: (m * 255).to(torch.uint8), r"hold 0\.\.1", r"divide by 255"),
    ("5d", lambda m: m[None, ..., None, None], r"must be a MASK", r"connect PVTT Load Video's mask output"),
    ("zero-size", lambda m: m[:, :0], r"is empty, shape", r"at least one frame of at least one pixel"),
]

#: Masks that do not fit the video (fit = checked against the video's length and size).
MISFIT_MASKS = [
    ("fewer-frames", lambda m: m[:4], r"mask has 4 frames but .* has 9", r"one mask frame per video frame"),
    ("other-size", lambda m: m[:, :, :-2], rf"mask is {W - 2}x{H} but .* is {W}x{H}", r"PVTT Match Mask to Video"),
]

COVERAGE_MASKS = [
    ("empty", lambda m: torch.zeros_like(m), r"mask is empty", r"white marks the product"),
    ("below-threshold", lambda m: m * 0.5, r"mask is empty \(no pixel above 0\.5\)", r"PVTT Mask From Box"),
    ("all-ones", lambda m: torch.ones_like(m), r"white on every pixel of every frame", r"Invert Mask"),
]


@dataclass
class Refusal:
    """A node call that must fail with an error naming the problem and the fix."""

    node: str
    inputs: Callable[[dict], dict]
    problem: str
    fix: str
    error: str = "InputError"


@dataclass
class Accepted:
    """A node call on an unusual but valid input, with what the output must be."""

    node: str
    inputs: Callable[[dict], dict]
    check: Callable[[tuple, dict], None] = field(default=lambda out, ctx: None)


def defaults(ctx: dict) -> dict:
    """Valid inputs of every tensor node, keyed by node id."""
    template, mask, product, model = ctx["template"], ctx["mask"], ctx["product"], ctx["model"]
    return {
        "PVTTTemplateTransfer": {"model": model, "template_video": template, "mask": mask, "product_image": product, "steps": 0,
                                     "seed": 0, "preserve_background": True},
        "PVTTCompareModels": {"template_video": template, "mask": mask, "product_image": product, "model_a": model, "seed": 0},
        "PVTTBackgroundPreserve": {"generated": clip(seed=1), "template_video": template, "mask": mask, "dilate_px": 2,
                                       "feather_px": 2.0},
        "PVTTMaskFromBox": {"video": template, "x": 0.25, "y": 0.25, "width": 0.5, "height": 0.5, "shape": "box"},
        "PVTTMaskGrow": {"mask": mask, "grow_px": 2, "feather_px": 0.0},
        "PVTTMaskPreview": {"video": template, "mask": mask, "color": "red", "opacity": 0.5},
        "PVTTMatchMask": {"video": template, "mask": mask, "mode": "error"},
        "PVTTSaveVideo": {"images": template, "filename_prefix": "PVTT/matrix", "fps": 8.0},
    }


def override(node: str, **changes) -> Callable[[dict], dict]:
    def make(ctx):
        inputs = defaults(ctx)[node]
        return {**inputs, **{k: (v(inputs[k]) if callable(v) else v) for k, v in changes.items()}}
    return make


IMAGE_INPUTS = {  # node -> its IMAGE inputs that a clip goes into
    "PVTTTemplateTransfer": ["template_video", "product_image"],
    "PVTTCompareModels": ["template_video", "product_image"],
    "PVTTBackgroundPreserve": ["generated", "template_video"],
    "PVTTMaskPreview": ["video"],
    "PVTTMatchMask": ["video"],
    "PVTTMaskFromBox": ["video"],
    "PVTTSaveVideo": ["images"],
}
MASK_NODES = ["PVTTTemplateTransfer", "PVTTCompareModels", "PVTTBackgroundPreserve", "PVTTMaskGrow", "PVTTMaskPreview",
              "PVTTMatchMask"]
#: Nodes that need the mask at the video's length and size (Match Mask's "error" mode included).
FIT_NODES = ["PVTTTemplateTransfer", "PVTTCompareModels", "PVTTBackgroundPreserve", "PVTTMaskPreview", "PVTTMatchMask"]
#: Nodes for which a mask with no product, or a mask that is all product, cannot give a useful clip.
COVERAGE_NODES = ["PVTTTemplateTransfer", "PVTTCompareModels", "PVTTBackgroundPreserve"]


def tensor_refusals():
    cases = {}
    for node, inputs in IMAGE_INPUTS.items():
        for name in inputs:
            for case, make, problem, fix in BAD_IMAGES:
                cases[f"{node}-{name}-{case}"] = Refusal(node, override(node, **{name: make}), problem, fix)
    for node in MASK_NODES:
        for case, make, problem, fix in BAD_MASKS:
            cases[f"{node}-mask-{case}"] = Refusal(node, override(node, mask=make), problem, fix)
    for node in FIT_NODES:
        for case, make, problem, fix in MISFIT_MASKS:
            cases[f"{node}-mask-{case}"] = Refusal(node, override(node, mask=make), problem, fix)
    for node in COVERAGE_NODES:
        for case, make, problem, fix in COVERAGE_MASKS:
            cases[f"{node}-mask-{case}"] = Refusal(node, override(node, mask=make), problem, fix)
    flat = lambda image: torch.full_like(image, 0.5)
    for node in ("PVTTTemplateTransfer", "PVTTCompareModels"):
        cases[f"{node}-product-flat-colour"] = Refusal(node, override(node, product_image=flat),
                                                       r"single flat colour", r"photo of the new product")
    cases.update({
        "PVTTBackgroundPreserve-generated-other-size": Refusal(
            "PVTTBackgroundPreserve", override("PVTTBackgroundPreserve", generated=lambda v: clip(height=H + 2)),
            r"differ in shape", r"connect the template that went into PVTT Template Transfer"),
        "PVTTMatchMask-resized-away": Refusal(
            "PVTTMatchMask", override("PVTTMatchMask", mode="resize", mask=lambda m: _dot(4 * H, 4 * W)),
            r"vanished when resized from", r"Grow it first"),
        "PVTTMatchMask-empty": Refusal("PVTTMatchMask", override("PVTTMatchMask", mask=lambda m: m * 0),
                                       r"mask is empty", r"PVTT Mask From Box"),
        "PVTTMaskFromBox-outside": Refusal("PVTTMaskFromBox", override("PVTTMaskFromBox", x=0.8),
                                           r"reaches outside the frame", r"x \+ width <= 1"),
        "PVTTMaskFromBox-empty-box": Refusal("PVTTMaskFromBox", override("PVTTMaskFromBox", width=0.0),
                                             r"box is empty", r"give width and height above 0"),
        "PVTTMaskFromBox-sub-pixel": Refusal("PVTTMaskFromBox", override("PVTTMaskFromBox", width=0.01, height=0.01),
                                             r"covers no pixel", r"at least"),
        "PVTTSaveVideo-prefix-outside": Refusal("PVTTSaveVideo", override("PVTTSaveVideo", filename_prefix="../../x"),
                                                r"points outside the output folder", r"plain name such as"),
        "PVTTSaveVideo-prefix-absolute": Refusal("PVTTSaveVideo", override("PVTTSaveVideo", filename_prefix="/tmp/x"),
                                                 r"points outside the output folder", r"plain name such as"),
        "PVTTSaveVideo-prefix-empty": Refusal("PVTTSaveVideo", override("PVTTSaveVideo", filename_prefix=" / "),
                                              r"not a usable file name", r"plain name such as"),
        "PVTTSaveVideo-prefix-nul": Refusal("PVTTSaveVideo", override("PVTTSaveVideo", filename_prefix="a\x00b"),
                                            r"not a usable file name", r"plain name such as"),
    })
    return cases


def _dot(height, width):
    mask = torch.zeros(1, height, width)
    mask[0, height // 2, width // 2] = 1
    return mask


REFUSALS = tensor_refusals()


@pytest.fixture
def ctx(model):
    return {"template": clip(), "mask": box(), "product": photo(), "model": model}


def assert_refused(excinfo, case: Refusal):
    error = excinfo.value
    assert type(error).__name__ == case.error, f"{type(error).__name__}: {error}"
    message = str(error)
    assert re.search(case.problem, message), f"problem not named: {message}"
    assert re.search(case.fix, message), f"fix not named: {message}"
    assert "Traceback" not in message


@pytest.mark.parametrize("case_id", sorted(REFUSALS))
def test_bad_tensor_input_is_refused_with_problem_and_fix(case_id, ctx, folders):
    case = REFUSALS[case_id]
    before = sorted(p for p in (folders / "output").rglob("*")) if (folders / "output").exists() else []
    with pytest.raises(Exception) as excinfo:
        execute(case.node, **case.inputs(ctx))
    assert_refused(excinfo, case)
    after = sorted(p for p in (folders / "output").rglob("*") if p.is_file()) if (folders / "output").exists() else []
    assert [p for p in after if p not in before] == [], "a refused node wrote files"


# --- unusual but valid tensors ------------------------------------------------------------------

def same_as_clean(node, make_input, name):
    """The node on the transformed input gives exactly what it gives on the clean input."""
    def check(out, ctx):
        clean = outputs(execute(node, **defaults(ctx)[node]))
        for got, want in zip(out, clean):
            if isinstance(want, torch.Tensor):
                assert got.dtype == torch.float32 and torch.equal(got, want)
    return Accepted(node, override(node, **{name: make_input}), check)


def transfer_shape(frames, height, width):
    def check(out, ctx):
        video = out[0]
        assert video.shape == (frames, height, width, 3)
        assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    return check


def odd(frames, height, width):
    return override("PVTTTemplateTransfer", template_video=lambda v: clip(frames, height, width),
                    mask=lambda m: box(frames, height, width))


ACCEPTED = {
    "TemplateTransfer-float64": same_as_clean("PVTTTemplateTransfer", lambda v: v.double(), "template_video"),
    "TemplateTransfer-bool-mask": same_as_clean("PVTTTemplateTransfer", lambda m: m > 0.5, "mask"),
    "TemplateTransfer-uint8-0-1-mask": same_as_clean("PVTTTemplateTransfer", lambda m: m.to(torch.uint8), "mask"),
    "TemplateTransfer-single-mask-frame": Accepted("PVTTTemplateTransfer", override("PVTTTemplateTransfer",
                                                   mask=lambda m: m[:1]), transfer_shape(FRAMES, H, W)),
    "TemplateTransfer-2d-mask": Accepted("PVTTTemplateTransfer", override("PVTTTemplateTransfer", mask=lambda m: m[0]),
                                         transfer_shape(FRAMES, H, W)),
    "TemplateTransfer-mask-with-channel": same_as_clean("PVTTTemplateTransfer", lambda m: m[..., None], "mask"),
    "TemplateTransfer-resampler-overshoot": Accepted(
        "PVTTTemplateTransfer", override("PVTTTemplateTransfer", template_video=lambda v: with_value(v, 0, 1.05)),
        transfer_shape(FRAMES, H, W)),
    "TemplateTransfer-1-frame": Accepted("PVTTTemplateTransfer", odd(1, H, W), transfer_shape(1, H, W)),
    "TemplateTransfer-2-frames": Accepted("PVTTTemplateTransfer", odd(2, H, W), transfer_shape(2, H, W)),
    "TemplateTransfer-20-frames": Accepted("PVTTTemplateTransfer", odd(20, H, W), transfer_shape(20, H, W)),
    "TemplateTransfer-odd-7x5": Accepted("PVTTTemplateTransfer", odd(FRAMES, 5, 7), transfer_shape(FRAMES, 5, 7)),
    "TemplateTransfer-2x2": Accepted("PVTTTemplateTransfer", override(
        "PVTTTemplateTransfer", template_video=lambda v: clip(3, 2, 2),
        mask=lambda m: torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])), transfer_shape(3, 2, 2)),
    "TemplateTransfer-tall-3x301": Accepted("PVTTTemplateTransfer", odd(3, 301, 3), transfer_shape(3, 301, 3)),
    "TemplateTransfer-product-batch-of-2": Accepted(  # one clip per product photo, frames_per_clip beside them
        "PVTTTemplateTransfer", override("PVTTTemplateTransfer", product_image=lambda p: torch.cat([p, p * 0.5])),
        lambda out, ctx: (transfer_shape(2 * FRAMES, H, W)(out, ctx), _assert(out[1] == FRAMES))),
    "TemplateTransfer-product-grey-1px": Accepted(
        "PVTTTemplateTransfer", override("PVTTTemplateTransfer", product_image=lambda p: torch.rand(1, 1, 2, 3)),
        transfer_shape(FRAMES, H, W)),
    "MaskGrow-empty-stays-empty": Accepted("PVTTMaskGrow", override("PVTTMaskGrow", mask=lambda m: m * 0),
                                           lambda out, ctx: _assert(float(out[0].max()) == 0.0)),
    "MaskGrow-all-ones-stays-full": Accepted("PVTTMaskGrow", override("PVTTMaskGrow", mask=torch.ones(2, 8, 8)),
                                             lambda out, ctx: _assert(bool((out[0] == 1).all()))),
    "MaskPreview-empty-mask-shows-the-video": Accepted(
        "PVTTMaskPreview", override("PVTTMaskPreview", mask=lambda m: m * 0),
        lambda out, ctx: _assert(torch.equal(out[0], ctx["template"]))),
    "MatchMask-resize-mode-fits-another-size": Accepted(
        "PVTTMatchMask", override("PVTTMatchMask", mode="resize", mask=lambda m: box(1, 2 * H, 2 * W)),
        lambda out, ctx: _assert(torch.equal(out[0], box()))),
    "MatchMask-all-ones-is-fitted": Accepted("PVTTMatchMask", override("PVTTMatchMask", mask=lambda m: m * 0 + 1),
                                             lambda out, ctx: _assert(bool((out[0] == 1).all()))),
    "SaveVideo-odd-size-keeps-every-pixel": Accepted("PVTTSaveVideo", override(
        "PVTTSaveVideo", images=lambda v: clip(3, 5, 7)), lambda out, ctx: _saved_size(ctx, 3, 5, 7)),
    "SaveVideo-1x1": Accepted("PVTTSaveVideo", override("PVTTSaveVideo", images=lambda v: clip(2, 1, 1)),
                              lambda out, ctx: _saved_size(ctx, 2, 1, 1)),
    "SaveVideo-float16": Accepted("PVTTSaveVideo", override("PVTTSaveVideo", images=lambda v: v.half()),
                                  lambda out, ctx: _saved_size(ctx, FRAMES, H, W)),
    "BackgroundPreserve-single-mask-frame": Accepted(
        "PVTTBackgroundPreserve", override("PVTTBackgroundPreserve", mask=lambda m: m[:1]),
        lambda out, ctx: _assert(out[0].shape == (FRAMES, H, W, 3))),
}


def _assert(condition):
    assert condition


def _saved_size(ctx, frames, height, width):
    """The MP4 holds every frame, at least the clip's size (odd sizes gain one repeated row/column)."""
    files = sorted((ctx["folders"] / "output" / "PVTT").glob("matrix_*.mp4"))
    assert len(files) == 1
    got, _ = video_io.read_video(files[0])
    assert got.shape[0] == frames
    assert got.shape[1] in (height, height + 1) and got.shape[2] in (width, width + 1)
    assert got.shape[1] % 2 == 0 and got.shape[2] % 2 == 0


@pytest.mark.parametrize("case_id", sorted(ACCEPTED))
def test_unusual_valid_tensor_input_gives_the_right_output(case_id, ctx, folders):
    case = ACCEPTED[case_id]
    ctx["folders"] = folders
    out = outputs(execute(case.node, **case.inputs(ctx)))  # Template Transfer also returns UI text
    case.check(out, ctx)


# --- memory guard ---------------------------------------------------------------------------------

@pytest.mark.parametrize("node", ["PVTTTemplateTransfer", "PVTTCompareModels", "PVTTBackgroundPreserve"])
def test_output_that_would_not_fit_in_memory_is_refused_before_work(node, ctx, monkeypatch):
    monkeypatch.setattr(validation, "available_memory", lambda: 20_000)  # 20 kB free
    started = []
    monkeypatch.setattr(ctx["model"].model, "condition", lambda *a: started.append(1))
    with pytest.raises(errors.InputError) as excinfo:
        execute(node, **defaults(ctx)[node])
    message = str(excinfo.value)
    assert f"generating {FRAMES} frames at {W}x{H} needs about" in message and "0.0 GB" in message
    assert "load fewer frames" in message and "downscale" in message
    assert started == []


# --- files ----------------------------------------------------------------------------------------

def write_bytes(folder, name, data: bytes):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sample_bytes(name):
    return (video_io.Path(__file__).resolve().parents[1] / "samples" / name).read_bytes()


def corrupt_inputs(inp):
    """Real broken files in the input folder; returns nothing (the names are used by the cases)."""
    mp4 = sample_bytes("pvtt_template.mp4")
    png = sample_bytes("pvtt_product.png")
    write_bytes(inp, "garbage.mp4", os.urandom(4096))
    write_bytes(inp, "empty.mp4", b"")
    write_bytes(inp, "truncated.mp4", mp4[: len(mp4) // 10])
    write_bytes(inp, "garbage.png", b"not an image at all")
    write_bytes(inp, "truncated.png", png[: len(png) // 3])
    write_bytes(inp, "notes.txt", b"hello")
    write_bytes(inp, "product.png", png)
    (inp / "empty_folder").mkdir()
    seq = inp / "mixed_sizes"
    seq.mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8), "red").save(seq / "0001.png")
    Image.new("RGB", (10, 8), "red").save(seq / "0002.png")
    write_bytes(inp, "flipped.png", flip_idat_bit(gradient_png(), 60))
    write_bytes(inp, "bomb.png", png_bomb())
    import cv2
    import numpy as np
    cv2.imwrite(str(inp / "float_0_255.tiff"), np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8))
    cv2.imwrite(str(inp / "float_nan.tiff"), np.full((8, 8), np.nan, np.float32))
    damaged_seq = inp / "damaged_frame"
    damaged_seq.mkdir()
    write_bytes(damaged_seq, "0001.png", gradient_png(64))
    write_bytes(damaged_seq, "0002.png", flip_idat_bit(gradient_png(64), 20))
    bad_seq = inp / "bad_frame"
    bad_seq.mkdir()
    Image.new("RGB", (8, 8), "red").save(bad_seq / "0001.png")
    write_bytes(bad_seq, "0002.png", b"broken")
    outside = inp.parent / "secret.png"
    outside.write_bytes(png)
    os.symlink(outside, inp / "link_out.png")


VIDEO_DEFAULTS = {"frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1}

FILE_REFUSALS = {
    "LoadVideo-missing": ("PVTTLoadVideo", {"video": "nope.mp4"}, "ValidationFailed", r"'nope\.mp4' not found",
                          r"Put your videos and images in ComfyUI's input folder"),
    "LoadVideo-traversal": ("PVTTLoadVideo", {"video": "../secret.png"}, "ValidationFailed", r"not found",
                            r"input folder"),
    "LoadVideo-absolute": ("PVTTLoadVideo", {"video": "/etc/passwd"}, "ValidationFailed", r"not found",
                           r"input folder"),
    "LoadVideo-samples-traversal": ("PVTTLoadVideo", {"video": "samples/../README.md"}, "ValidationFailed",
                                    r"not found", r"input folder"),
    "LoadVideo-symlink-out": ("PVTTLoadImage", {"image": "link_out.png"}, "ValidationFailed", r"not found",
                              r"input folder"),
    "LoadVideo-wrong-type": ("PVTTLoadVideo", {"video": "notes.txt"}, "ValidationFailed",
                             r"not one of the supported file types", r"\.mp4"),
    "LoadVideo-garbage": ("PVTTLoadVideo", {"video": "garbage.mp4"}, "VideoReadError",
                          r"cannot open garbage\.mp4 as a video|no frame was loaded", r"Convert it to MP4|check that"),
    "LoadVideo-empty-file": ("PVTTLoadVideo", {"video": "empty.mp4"}, "VideoReadError",
                             r"cannot open empty\.mp4|no frame", r"Convert it to MP4|check that"),
    "LoadVideo-truncated": ("PVTTLoadVideo", {"video": "truncated.mp4"}, "VideoReadError",
                            r"cannot open truncated\.mp4|no frame", r"Convert it to MP4|check that"),
    "LoadVideo-skip-past-the-end": ("PVTTLoadVideo", {"video": "samples/pvtt_template.mp4", "skip_first_frames": 50},
                                    "VideoReadError", r"no frame was loaded .*9 frames", r"Lower skip_first_frames"),
    "LoadVideo-empty-sequence-folder": ("PVTTLoadVideo", {"video": "empty_folder/"}, "ValidationFailed",
                                        r"image sequence 'empty_folder/' not found", r"folder of numbered PNG"),
    "LoadVideo-sequence-traversal": ("PVTTLoadVideo", {"video": "../"}, "ValidationFailed", r"not found",
                                     r"input folder"),
    "LoadVideo-sequence-mixed-sizes": ("PVTTLoadVideo", {"video": "mixed_sizes/"}, "VideoReadError",
                                       r"0002\.png .* is 10x8 but the first frame is 8x8", r"resize them all to 8x8"),
    "LoadVideo-sequence-damaged-frame": ("PVTTLoadVideo", {"video": "damaged_frame/"}, "ImageReadError",
                                         r"frame 0002\.png of damaged_frame/ is damaged", r"Export it again"),
    "LoadVideo-sequence-broken-frame": ("PVTTLoadVideo", {"video": "bad_frame/"}, "ImageReadError",
                                        r"cannot read frame 0002\.png of bad_frame/ as an image", r"Save it as PNG"),
    "LoadImage-missing": ("PVTTLoadImage", {"image": "nope.png"}, "ValidationFailed", r"not found", r"input folder"),
    "LoadImage-traversal": ("PVTTLoadImage", {"image": "../secret.png"}, "ValidationFailed", r"not found",
                            r"input folder"),
    "LoadImage-garbage": ("PVTTLoadImage", {"image": "garbage.png"}, "ImageReadError",
                          r"cannot read garbage\.png as an image", r"Save it as PNG"),
    "LoadImage-truncated": ("PVTTLoadImage", {"image": "truncated.png"}, "ImageReadError",
                            r"truncated\.png is damaged", r"Export it again"),
    "LoadImage-png-flipped-bit": ("PVTTLoadImage", {"image": "flipped.png"}, "ImageReadError",
                                  r"flipped\.png is damaged .*checksum", r"Export it again"),
    "LoadImage-png-bomb": ("PVTTLoadImage", {"image": "bomb.png"}, "ImageReadError",
                           r"bomb\.png is 20000x20000 pixels, too large to load", r"downscale the image to at most"),
    "LoadImage-float-0-255": ("PVTTLoadImage", {"image": "float_0_255.tiff"}, "ImageReadError",
                              r"float image with values 0\.\.255", r"Rescale it to 0\.\.1"),
    "LoadImage-float-nan": ("PVTTLoadImage", {"image": "float_nan.tiff"}, "ImageReadError",
                            r"float image with 64 NaN or Inf pixels", r"16-bit PNG"),
    "LoadImage-video-file": ("PVTTLoadImage", {"image": "samples/pvtt_template.mp4"}, "ValidationFailed",
                             r"not one of the supported file types", r"\.png"),
}


@pytest.mark.parametrize("case_id", sorted(FILE_REFUSALS))
def test_bad_media_file_is_refused_with_problem_and_fix(case_id, folders):
    corrupt_inputs(folders / "input")
    node, inputs, error, problem, fix = FILE_REFUSALS[case_id]
    if node == "PVTTLoadVideo":
        inputs = {**VIDEO_DEFAULTS, **inputs}
    with pytest.raises(Exception) as excinfo:
        execute(node, **inputs)
    assert_refused(excinfo, Refusal(node, None, problem, fix, error))


def test_huge_video_is_refused_by_the_ram_guard_before_decoding(folders, monkeypatch):
    monkeypatch.setattr(video_io, "available_memory", lambda: 100_000)
    decoded = []
    monkeypatch.setattr(video_io.cv2, "cvtColor", lambda *a: decoded.append(1))
    with pytest.raises(errors.InputError) as excinfo:
        execute("PVTTLoadVideo", video="samples/pvtt_template.mp4", **VIDEO_DEFAULTS)
    assert re.search(r"loading 9 frames .* at 128x128 needs about", str(excinfo.value))
    assert "set frame_load_cap to 0 or less" not in str(excinfo.value)
    assert "downscale the video" in str(excinfo.value) and decoded == []


def test_video_without_a_frame_count_is_stopped_by_the_ram_guard_while_decoding(folders, monkeypatch):
    write_raw_mjpeg(folders / "input" / "raw.avi", frames=12, height=64, width=80)  # reports a negative count
    monkeypatch.setattr(video_io, "available_memory", lambda: 2 * validation.clip_bytes(3, 64, 80) + 1)
    with pytest.raises(errors.InputError) as excinfo:
        execute("PVTTLoadVideo", video="raw.avi", **VIDEO_DEFAULTS)
    assert re.search(r"loading 4 frames of raw\.avi at 80x64 \(its container does not say how many frames",
                     str(excinfo.value))
    assert "set frame_load_cap to 3 or less" in str(excinfo.value)


@pytest.mark.parametrize("name", ["grey16.png", "float.tiff", "mask16/"])
def test_deep_image_files_load_by_their_real_range(name, folders):
    import cv2
    import numpy as np

    inp = folders / "input"
    levels = feathered_disk(32)
    if name == "grey16.png":
        cv2.imwrite(str(inp / name), levels)
        loaded = execute("PVTTLoadImage", image=name)[0][0, ..., 1]
    elif name == "float.tiff":
        cv2.imwrite(str(inp / name), (levels / 65535.0).astype(np.float32))
        loaded = execute("PVTTLoadImage", image=name)[0][0, ..., 1]
    else:
        (inp / name).mkdir()
        for k in range(2):
            cv2.imwrite(str(inp / name / f"{k}.png"), levels)
        loaded = execute("PVTTLoadVideo", video=name, **VIDEO_DEFAULTS)[1][1]
    assert float((loaded - torch.from_numpy(levels / 65535.0).float()).abs().max()) <= 0.5 / 255 + 1e-6


def test_huge_photo_is_refused_by_the_ram_guard_before_decoding(folders, monkeypatch):
    from PIL import Image

    Image.new("RGB", (4000, 3000), "white").save(folders / "input" / "huge.png")  # 36 kB on disk
    monkeypatch.setattr(validation, "available_memory", lambda: 100_000_000)  # 100 MB free: 144 MB needed
    monkeypatch.setattr(video_io.Image.Image, "convert", lambda *a, **k: pytest.fail("decoded anyway"))
    with pytest.raises(errors.InputError) as excinfo:
        execute("PVTTLoadImage", image="huge.png")
    message = str(excinfo.value)
    assert "loading huge.png at 4000x3000 needs about 0.1 GB" in message and "downscale the image" in message


# --- checkpoints ----------------------------------------------------------------------------------

def safetensors_bytes(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def bad_checkpoints(folder, models_dir):
    good = (models_dir / TINY_NAME).read_bytes()
    write_bytes(folder, "truncated.safetensors", good[: len(good) // 2])
    write_bytes(folder, "garbage.safetensors", os.urandom(2048))
    write_bytes(folder, "empty.safetensors", b"")
    write_bytes(folder, "no_metadata.safetensors", safetensors_bytes({"w": {"dtype": "F32", "shape": [1],
                                                                           "data_offsets": [0, 4]}}, b"\0" * 4))
    meta = json.loads(checkpoint.read_metadata(models_dir / TINY_NAME) and json.dumps(
        checkpoint.read_metadata(models_dir / TINY_NAME)))
    other_arch = {**meta, "model": {**meta["model"], "arch": "sdxl_unet"}}
    write_bytes(folder, "other_arch.safetensors", _with_metadata(good, other_arch))
    newer = {**meta, "format_version": 99}
    write_bytes(folder, "newer.safetensors", _with_metadata(good, newer))
    write_bytes(folder, "identity_encoder.safetensors", safetensors_bytes(
        {"__metadata__": {"pvtt_identity_encoder": "{}"}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        b"\0" * 4))
    import pickle
    write_bytes(folder, "pickled.safetensors", pickle.dumps({"weights": [1, 2, 3]}))
    write_bytes(folder, "model.ckpt", pickle.dumps({"weights": [1, 2, 3]}))
    other = pvtt_model.WanConcatPVTT(pvtt_model.TINY_BACKBONE)
    state = other.state_dict()
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "wrong_shapes.safetensors"),
              metadata={checkpoint.FORMAT: json.dumps(meta)})
    for name, edit in METADATA_EDITS.items():
        edited = json.loads(json.dumps(meta))
        edit(edited)
        write_bytes(folder, f"{name}.safetensors", _with_metadata(good, edited))
    write_bytes(folder, "nested_json.safetensors", _with_raw_metadata(good, "[" * 100_000 + "]" * 100_000))
    for name, edit in WEIGHT_EDITS.items():
        weights = {k: v.clone() for k, v in pvtt_model.WanConcatPVTT(pvtt_model.TINY_BACKBONE).state_dict().items()}
        edit(weights)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / f"{name}.safetensors"),
                  metadata={checkpoint.FORMAT: json.dumps(meta)})


def _set(*keys, value):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value
    return edit


#: Issue 12, defect 8 and 9: metadata that used to crash, exhaust memory or sample NaN/noise.
METADATA_EDITS = {
    "format_version_string": _set("format_version", value="1"),
    "model_string": _set("model", value="wan_concat"),
    "sampler_empty": _set("sampler", value={}),
    "timesteps_empty": _set("sampler", value={"kind": "few_step", "steps": 1, "timesteps": []}),
    "frames_zero": _set("video", "frames", value=0),
    "layers_1e6": _set("model", "backbone_config", "num_layers", value=1e6),
    "head_dim_1e9": _set("model", "backbone_config", "attention_head_dim", value=1e9),
    "shift_nan": _set("schedule", "shift", value=float("nan")),
    "euler_steps_0": _set("sampler", value={"kind": "euler_cfg", "steps": 0, "cfg": 1.0}),
    "timesteps_5000": _set("sampler", value={"kind": "few_step", "steps": 2, "timesteps": [5000, -1000]}),
}
FIRST_WEIGHT = "backbone.blocks.0.ffn.net.0.proj.weight"
WEIGHT_EDITS = {
    "nan_weights": lambda w: [t.fill_(float("nan")) for t in w.values()],
    "one_inf_tensor": lambda w: w[FIRST_WEIGHT].view(-1).__setitem__(3, float("inf")),
    "int32_weights": lambda w: w.__setitem__(FIRST_WEIGHT, (w[FIRST_WEIGHT] * 100).to(torch.int32)),
}


def _with_raw_metadata(data: bytes, text: str) -> bytes:
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8: 8 + size])
    header["__metadata__"] = {**header.get("__metadata__", {}), checkpoint.FORMAT: text}
    return safetensors_bytes(header, data[8 + size:])


def _with_metadata(data: bytes, meta: dict) -> bytes:
    """The same tensors under another PVTT metadata block (rewrites the safetensors header)."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8: 8 + size])
    header["__metadata__"] = {**header.get("__metadata__", {}), checkpoint.FORMAT: json.dumps(meta)}
    return safetensors_bytes(header, data[8 + size:])


CHECKPOINT_REFUSALS = {
    "missing": ("nope.safetensors", "ValidationFailed", r"'nope\.safetensors' was not found",
                r"Put PVTT \.safetensors files in"),
    "traversal": ("../models_pvtt0/tiny_2step.safetensors", "ValidationFailed", r"was not found", r"Put PVTT"),
    "absolute": ("/etc/passwd", "ValidationFailed", r"was not found", r"Put PVTT"),
    "truncated": ("truncated.safetensors", "CheckpointError", r"truncated|incomplete|cannot be read|corrupt",
                  r"download|copy|export|again"),
    "garbage": ("garbage.safetensors", "CheckpointError", r"not a valid|cannot be read|corrupt",
                r"again|export|copy"),
    "empty-file": ("empty.safetensors", "CheckpointError", r"empty|not a valid|cannot be read|corrupt",
                   r"again|export|copy"),
    "no-metadata": ("no_metadata.safetensors", "CheckpointError", r"has no PVTT metadata",
                    r"Use a checkpoint written by pvtt_train"),
    "wrong-arch": ("other_arch.safetensors", "CheckpointError", r"unknown PVTT architecture 'sdxl_unet'",
                   r"knows 'wan_concat' and 'wan_vace'. Update PVTT"),
    "newer-format": ("newer.safetensors", "CheckpointError", r"99|newer", r"update|upgrade"),
    "helper-encoder": ("identity_encoder.safetensors", "ValidationFailed", r"is one of PVTT's encoders",
                       r"pick pvtt_teacher\.safetensors or a pvtt_student"),
    "pickle-renamed": ("pickled.safetensors", "CheckpointError", r"not a valid|cannot be read|corrupt|pickle",
                       r"again|export|safetensors"),
    "wrong-shapes": ("wrong_shapes.safetensors", "CheckpointError", r"shape", r"export|match|again|metadata"),
    # Issue 12, defect 8: each names the file, the field and the allowed range.
    "format-version-string": ("format_version_string.safetensors", "CheckpointError",
                              r"^format_version_string\.safetensors: format_version is a string \"1\"",
                              r"whole number in \[0, 1\]\. Re-export it with pvtt_train"),
    "model-string": ("model_string.safetensors", "CheckpointError", r"model is a string \"wan_concat\"",
                     r"must be an object\. Re-export"),
    "sampler-empty": ("sampler_empty.safetensors", "CheckpointError", r"sampler\.kind is null",
                      r"one of \['euler_cfg', 'few_step'\]\. Re-export"),
    "timesteps-empty": ("timesteps_empty.safetensors", "CheckpointError", r"sampler\.timesteps is a list \[\]",
                        r"list of 1 to 1000 values.*Re-export"),
    "frames-zero": ("frames_zero.safetensors", "CheckpointError", r"video\.frames is 0",
                    r"whole number in \[1, 1024\]\. Re-export"),
    "layers-1e6": ("layers_1e6.safetensors", "CheckpointError", r"backbone_config\.num_layers is 1000000\.0",
                   r"whole number in \[1, 200\]\. Re-export"),
    "head-dim-1e9": ("head_dim_1e9.safetensors", "CheckpointError",
                     r"backbone_config\.attention_head_dim is 1000000000\.0", r"whole number in \[6, 1024\]"),
    "nested-json": ("nested_json.safetensors", "CheckpointError", r"nested too deeply",
                    r"Re-export it with pvtt_train"),
    # Issue 12, defect 9: schedules and weights that made Template Transfer return NaN or noise.
    "shift-nan": ("shift_nan.safetensors", "CheckpointError", r"schedule\.shift is nan",
                  r"finite number in \(0, 100\]\. Re-export"),
    "euler-steps-0": ("euler_steps_0.safetensors", "CheckpointError", r"sampler\.steps is 0",
                      r"whole number in \[1, 1000\]\. Re-export"),
    "timesteps-out-of-range": ("timesteps_5000.safetensors", "CheckpointError",
                               r"sampler\.timesteps is a list \[5000, -1000\]",
                               r"strictly decreasing within \[1, 1000\].*Re-export"),
    "nan-weights": ("nan_weights.safetensors", "CheckpointError", r"weight '[\w.]+' holds (\d+) NaN/Inf values of \1",
                    r"intact copy|export it again"),
    "one-inf-tensor": ("one_inf_tensor.safetensors", "CheckpointError",
                       rf"weight '{FIRST_WEIGHT}' holds 1 NaN/Inf values", r"intact copy|export it again"),
    "int32-weights": ("int32_weights.safetensors", "CheckpointError", rf"tensor '{FIRST_WEIGHT}' is stored as I32",
                      r"export it again with pvtt_train"),
}


@pytest.fixture(scope="module")
def bad_models_dir(tmp_path_factory, models_dir):
    """One models folder of every bad checkpoint beside the good one, built once for the module (each
    holds a copy of the tiny model's tensors: rebuilding it per case wrote 1.8 GB per test run)."""
    own = tmp_path_factory.mktemp("bad_models")
    (own / TINY_NAME).write_bytes((models_dir / TINY_NAME).read_bytes())
    bad_checkpoints(own, models_dir)
    return own


def _listing(folder):
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.mark.parametrize("case_id", sorted(CHECKPOINT_REFUSALS))
def test_bad_checkpoint_is_refused_with_problem_and_fix(case_id, folders, bad_models_dir, monkeypatch):
    before = _listing(bad_models_dir)
    monkeypatch.setenv("PVTT_MODELS_DIR", str(bad_models_dir))
    name, error, problem, fix = CHECKPOINT_REFUSALS[case_id]
    with pytest.raises(Exception) as excinfo:
        execute("PVTTLoadModel", model_name=name)
    assert_refused(excinfo, Refusal("PVTTLoadModel", None, problem, fix, error))
    assert _listing(bad_models_dir) == before, "a refused checkpoint changed the models folder"


def test_pickle_checkpoints_are_never_listed_or_unpickled(folders, bad_models_dir, monkeypatch):
    import pickle

    monkeypatch.setenv("PVTT_MODELS_DIR", str(bad_models_dir))
    assert "model.ckpt" not in nodes["PVTTLoadModel"].INPUT_TYPES()["required"]["model_name"][0]
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled a user file"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled a user file"))
    with pytest.raises(Exception) as excinfo:
        execute("PVTTLoadModel", model_name="model.ckpt")
    assert "not found" in str(excinfo.value) or "pickle" in str(excinfo.value)
    with pytest.raises(errors.CheckpointError):
        execute("PVTTLoadModel", model_name="pickled.safetensors")


def test_template_transfer_never_returns_a_nan_clip(folders, models_dir, monkeypatch, tmp_path, ctx):
    """A checkpoint whose finite weights overflow when run: Template Transfer raises an error naming the
    file (issue 12, defect 9) instead of returning the NaN clip, which the final clamp would have kept."""
    from safetensors.torch import load_file, save_file

    own = tmp_path / "own_models"
    own.mkdir()
    state = load_file(str(models_dir / TINY_NAME))
    state["backbone.proj_out.weight"] = torch.full_like(state["backbone.proj_out.weight"], 1e38)
    save_file(state, str(own / "overflow.safetensors"),
              metadata={checkpoint.FORMAT: json.dumps(checkpoint.read_metadata(models_dir / TINY_NAME))})
    monkeypatch.setenv("PVTT_MODELS_DIR", str(own))
    model = execute("PVTTLoadModel", model_name="overflow.safetensors")[0]
    for node in ("PVTTTemplateTransfer", "PVTTCompareModels"):
        with pytest.raises(errors.CheckpointError) as excinfo:
            execute(node, **{**defaults(ctx)[node], **({"model": model} if node == "PVTTTemplateTransfer"
                                                        else {"model_a": model})})
        message = str(excinfo.value)
        assert message.startswith("overflow.safetensors produced NaN/Inf values (")
        assert "no clip was returned" in message and "Re-export it" in message


# --- acceleration ---------------------------------------------------------------------------------

def hide_packages(monkeypatch, *names):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in names:
            return None
        return real(name, *args, **kwargs)
    monkeypatch.setattr(optional.importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("node,inputs,hidden,problem,fix", [
    ("PVTTAccelerate", {"attention": "sdpa", "precision": "fp32", "compile": "off", "int8": "w8a16", "token_merging": 0.0},
     ("torchao",), r"needs torchao, which is not installed", r"pip install torchao"),
    ("PVTTOnnxRuntime", {"batch_profile": "auto"}, ("onnxruntime",), r"needs onnxruntime, which is not installed",
     r"pip install onnxruntime"),
    ("PVTTOnnxRuntime", {"batch_profile": "auto"}, ("onnx", "onnxscript"), r"needs onnx, onnxscript",
     r"pip install onnx onnxscript"),
])
def test_missing_optional_package_names_the_install_command(node, inputs, hidden, problem, fix, model, monkeypatch):
    hide_packages(monkeypatch, *hidden)
    with pytest.raises(optional.MissingPackage) as excinfo:
        execute(node, model=model, **inputs)
    assert re.search(problem, str(excinfo.value)) and re.search(fix, str(excinfo.value))
    assert "requirements-accel.txt" in str(excinfo.value)


def test_tensorrt_without_cuda_names_the_install_and_the_fallback(model):
    with pytest.raises(Exception) as excinfo:
        execute("PVTTTensorRT", model=model, precision="fp16", batch_profile="auto", workspace_gb=1.0)
    message = str(excinfo.value)
    assert type(excinfo.value).__name__ == "TensorRTUnavailable"
    assert re.search(r"CUDA|tensorrt", message) and "ONNX Runtime" in message


@pytest.mark.parametrize("node", ["PVTTAccelerate", "PVTTOnnxRuntime", "PVTTTensorRT"])
def test_accelerating_an_accelerated_model_says_to_connect_the_loader(node, model):
    fast = execute("PVTTAccelerate", model=model, attention="sdpa", precision="fp32", compile="off", int8="off",
                   token_merging=0.0)["result"][0]  # the node also returns its report as UI text
    inputs = {"PVTTAccelerate": {"attention": "sdpa", "precision": "bf16", "compile": "off", "int8": "off", "token_merging": 0.0},
              "PVTTOnnxRuntime": {"batch_profile": "auto"},
              "PVTTTensorRT": {"precision": "fp16", "batch_profile": "auto", "workspace_gb": 1.0}}[node]
    with pytest.raises(Exception) as excinfo:
        execute(node, model=fast, **inputs)
    assert re.search(r"already|accelerated", str(excinfo.value)) and "PVTT Load Model" in str(excinfo.value)


def test_onnx_runtime_refuses_out_of_profile_shapes_with_the_fix(model, folders):
    fast = execute("PVTTOnnxRuntime", model=model, batch_profile="auto")[0]
    denoiser = fast.model.backbone
    inputs = importlib.import_module(f"{PACKAGE}.pvtt_accel.denoiser").capture_denoiser_inputs(model, batch=2)
    with pytest.raises(onnx_export.ShapeOutsideProfile) as excinfo:
        denoiser(**inputs, return_dict=False)
    message = str(excinfo.value)
    assert "batch" in message and "ShapeProfile.dynamic" in message


def test_tensorrt_runner_refuses_out_of_profile_shapes_before_touching_the_gpu(model):
    """The engine runner's guard alone (no TensorRT here): bounds as an engine of batch 1 reports them."""
    denoiser_mod = importlib.import_module(f"{PACKAGE}.pvtt_accel.denoiser")
    inputs = denoiser_mod.capture_denoiser_inputs(model, batch=1)
    runner = tensorrt_engine.TrtDenoiser.__new__(tensorrt_engine.TrtDenoiser)
    torch.nn.Module.__init__(runner)
    runner._bounds = {n: (tuple(t.shape), tuple(t.shape)) for n, t in inputs.items()}
    runner.engine_path = video_io.Path("student-static-b1.engine")
    runner.profile = onnx_export.ShapeProfile.static(1)
    wider = denoiser_mod.capture_denoiser_inputs(model, batch=3)
    with pytest.raises(onnx_export.ShapeOutsideProfile) as excinfo:
        runner(**wider)
    message = str(excinfo.value)
    assert "student-static-b1.engine" in message and "ShapeProfile.dynamic" in message and "ONNX Runtime" in message
