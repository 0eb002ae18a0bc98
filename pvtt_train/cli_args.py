"""Checks of ``python -m pvtt_train`` arguments and input files, before a command does any work.

argparse ``type`` functions refuse a bad value at parse time with a message that names the value and
what to write instead; ``check_model_file``/``check_encoders`` refuse a missing, pickled, damaged or
wrong-kind file before the command writes anything. Standard library only (plus lazy safetensors
header reads), so building the parser stays fast and quiet.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
from pathlib import Path

# --- argument types: checked at parse time, each message names the value and what to write instead ----------

def whole(minimum: int, meaning: str = "", maximum: int | None = None):
    """argparse ``type``: a whole number >= ``minimum`` (and <= ``maximum``, when given); ``meaning`` explains a
    special value (e.g. 0 = none)."""
    wanted = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; write one {wanted}{meaning}") \
                from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is too small; write a whole number {wanted}{meaning}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is too large; write a whole number {wanted}{meaning}")
        return value

    parse.__name__ = f"whole number {wanted}"
    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
           meaning: str = ""):
    """argparse ``type``: a finite number in the given range (``*_open``: the bound itself is excluded)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = f"a number {' and '.join(parts)}" if parts else "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; write {wanted}{meaning}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; write {wanted}{meaning}")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; write {wanted}{meaning}")
        return value

    parse.__name__ = wanted
    return parse


#: Seeds end in ``torch.Generator.manual_seed``, which takes at most 2**64 - 1, after commands have scaled and
#: offset them (``distill`` seeds its streams with ``seed * 1009 + rank``; each of ``sampler-eval --repeats`` starts
#: past the chunk seeds of the ones before), so a seed is held to numpy's classic 32-bit range.
SEED = whole(0, maximum=2**32 - 1)
LEARNING_RATE = number(0, low_open=True, meaning=" (e.g. 1e-4)")
CFG = number(1, meaning=" (1 = no guidance)")
#: DMD's real score may also lean towards the unconditional branch (below 1): on the specular EDM teacher
#: that brings the GAN student closer to the data than the teacher's own CFG does (README, issue 14).
REAL_SCORE_CFG = number(0, meaning=" (1 = no guidance, below 1 = towards the unconditional branch)")
#: Autoguidance's weight (``--guide-weight``): at 1 the guide would change nothing.
AUTOGUIDANCE_WEIGHT = number(1, 10, low_open=True, meaning=" (at 1 the guide changes nothing; e.g. 2)")
#: The flow shift a teacher is sampled at (``sampler-eval --shift``, ``distill --teacher-shift``).
FLOW_SHIFT = number(0, 100, low_open=True, meaning=" (e.g. 5, Wan 2.1's at 720p)")


def _blocked_by_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (so nothing can be created below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _refuse_inside_a_file(text: str) -> None:
    """An output path below an existing file can never be created; say which file is in the way."""
    blocker = _blocked_by_file(Path(text))
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{blocker} is a file, so {text} cannot be created inside it; "
                                         f"choose a path outside it")


def out_folder(text: str) -> str:
    """argparse ``type``: a folder to write into; it may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file, not a folder; pass a folder path "
                                         f"(it is created if missing)")
    _refuse_inside_a_file(text)
    return text


def out_file(suffix: str = ".safetensors"):
    """argparse ``type``: a file to write, named ``*<suffix>``; not a folder and not inside a file."""
    def parse(text: str) -> str:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; pass a file path ending in {suffix}, "
                                             f"e.g. {path / ('model' + suffix)}")
        if path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"{text} does not end in {suffix}; PVTT writes weights only as "
                                             f"{suffix} files, e.g. {path.with_suffix(suffix)}")
        _refuse_inside_a_file(text)
        return text

    parse.__name__ = f"{suffix} file"
    return parse


def clip_frames(text: str) -> int:
    """``data --frames``: the synthetic generator needs at least 2 frames (there is motion to render)."""
    return whole(2, " (the generator renders motion between frames)")(text)


def clip_side(text: str) -> int:
    """``data --height/--width``: even (mp4v crops odd sizes) and big enough for the largest product."""
    from .data.synthetic import SyntheticConfig  # numpy only

    # SyntheticVideoGenerator refuses clips where 1.32 x the largest product side does not fit.
    largest = SyntheticConfig().product_size[1]
    smallest = max(8, math.ceil(1.32 * largest))
    smallest += smallest % 2
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; write an even number of pixels >= "
                                         f"{smallest}, e.g. 16") from None
    if value < smallest or value % 2:
        raise argparse.ArgumentTypeError(
            f"{value} pixels cannot be rendered: clips need an even size (the mp4v encoder crops odd ones) of at "
            f"least {smallest} (the product, up to {largest:g} px, must fit with its zoom and rotation); write an "
            f"even number >= {smallest}, e.g. 16")
    return value


def step_path(text: str) -> str | tuple[int, ...]:
    """``--path``: a named path (``default``, ``gentle``) or step counts from most to fewest, e.g. 16,8,4."""
    if not any(c.isdigit() for c in text):
        from .distill.config import PATHS

        if text not in PATHS:
            raise argparse.ArgumentTypeError(f"unknown path {text!r}; write one of {', '.join(PATHS)} or step counts "
                                             f"from most to fewest, e.g. 16,8,4")
        return text
    try:
        steps = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of step counts; write whole numbers separated by "
                                         f"commas, from most to fewest, e.g. 16,8,4") from None
    if any(s < 1 for s in steps) or any(a <= b for a, b in itertools.pairwise(steps)):
        raise argparse.ArgumentTypeError(f"{text!r}: each stage needs fewer steps than the one before and at least "
                                         f"1; write strictly decreasing step counts >= 1, e.g. 16,8,4")
    return steps


#: Student updates per stage of ``distill``'s default path (16, 8, 4 steps); the shipped students are its run. With
#: the shipped teacher, whose own 50-step sampler scores worse than its few-step one, more DMD updates move the
#: students further toward that weaker distribution: 30,80,130 scored better on every gate figure than the
#: earlier 60,100,150 (README, issue 14).
DEFAULT_GENERATOR_STEPS = "30,80,130"

#: ``demo``'s budget for a teacher the user names: fewer updates than ``distill``'s, so that the README's demo command
#: ends within issue 14's 20 minutes on 2 cores on slow hosts too (30,80,130 took 21 min 54 s on one). ``demo
#: --teacher models_shipped/pvtt_teacher.safetensors --generator-steps 30,80,130`` reproduces the shipped velocity
#: students bit for bit.
DEMO_GENERATOR_STEPS = "20,50,80"

#: The flow shift ``demo`` samples its default teacher at (Wan 2.1's own at 720p): there, autoguided, the shipped
#: paste-residual teacher's 50-step sampler is its best, so DMD has a better sampler to distil (README, *Shifted like
#: Wan's own sampler?*).
DEMO_TEACHER_SHIFT = 5.0

#: The recipe with which ``demo`` distils its default teacher (README, *Trained longer by the truth?* and *What the
#: demo measured*): one critic update per student update, so that the same minutes buy about 2.6 times the student
#: updates, most of them spent on the 4-step student; every stage at one learning rate; the ground-truth loss
#: (``distill/truth.py``) weighted high, its pixels weighed as the teacher's own loss weighs them. Each part gives way
#: to its flag. 320 updates at 4 steps, not 400: at 400 the demo took 1,152 s at a slow hour, which with the venv's
#: set-up passes issue 14's 20 minutes.
DEMO_RESIDUAL_GENERATOR_STEPS = "20,40,320"
DEMO_CRITIC_RATIO = 1
DEMO_LR_STUDENT = 2e-4
DEMO_TRUTH_WEIGHT = 100.0
DEMO_TRUTH_REGION = (4.0, 36.0)


def step_budgets(text: str) -> tuple[int, ...]:
    """``--generator-steps``: one budget for every stage, or one per stage, each >= 1."""
    try:
        budgets = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers; write one number or one per "
                                         f"stage, e.g. {DEFAULT_GENERATOR_STEPS}") from None
    if any(b < 1 for b in budgets):
        raise argparse.ArgumentTypeError(f"{text!r}: every stage needs at least 1 student update; write numbers "
                                         f">= 1, e.g. {DEFAULT_GENERATOR_STEPS}")
    return budgets


def shape_list(text: str) -> tuple[str, ...]:
    """``--shapes``: training silhouettes separated by commas, e.g. ellipse,rounded."""
    from .data.shapes import SHAPES

    shapes = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in shapes if s not in SHAPES]
    if not shapes or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: write one or more of {', '.join(SHAPES)} separated by commas, "
                                         f"e.g. ellipse,rounded")
    return shapes


def aspect_range(text: str) -> tuple[float, float]:
    """``--aspect MIN,MAX``: the width / height range of ellipses and rounded rectangles, within ``ASPECT_LIMITS``."""
    from .data.shapes import ASPECT_LIMITS

    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range; write two numbers separated by a comma, "
                                         f"e.g. 0.5,0.75") from None
    lowest, highest = ASPECT_LIMITS
    if not lowest <= low <= high <= highest:
        raise argparse.ArgumentTypeError(f"{text!r}: write MIN,MAX with {lowest:g} <= MIN <= MAX <= {highest:g}, "
                                         f"e.g. 0.5,0.75")
    return low, high


def region_weights(text: str) -> tuple[float, float]:
    """``--truth-region MASK,INTERIOR``: pixel weights in the edit region (> 0) and added at its interior (>= 0)."""
    try:
        mask, interior = (float(x) for x in text.split(","))
    except ValueError:
        mask = interior = math.nan
    if not (math.isfinite(mask) and math.isfinite(interior) and mask > 0 and interior >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: write MASK,INTERIOR with a mask weight > 0 and an interior "
                                         f"weight >= 0, e.g. 4,36 (the shipped paste-residual teacher's own)")
    return mask, interior


def loss_weight(text: str) -> tuple[str, tuple[float, int | None]]:
    """``--weight NAME=W[:WARMUP]`` -> (name, (weight, warm-up or None for the default))."""
    from .distill.config import LOSSES

    name, sep, value = text.partition("=")
    weight, _, warmup = value.partition(":")
    if name not in LOSSES:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown loss {name!r}; write NAME=WEIGHT[:WARMUP] with NAME one "
                                         f"of {', '.join(LOSSES)}, e.g. temporal=0.2:10")
    try:
        w = float(weight)
        steps = int(warmup) if warmup else None
    except ValueError:
        w, steps = math.nan, None
    if not sep or not math.isfinite(w) or w < 0 or (steps is not None and steps < 0):
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=WEIGHT[:WARMUP] with a weight >= 0 and a warm-up of "
                                         f">= 0 generator steps, e.g. {name}=0.2:10")
    return name, (w, steps)


def device_name(text: str) -> str:
    """``--device``: cpu, cuda or cuda:N (whether CUDA is there is checked when the command runs)."""
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; write cpu, cuda or cuda:N")


def attention_layouts(text: str) -> list[tuple[int, int, int]]:
    """``bench-attention --layouts``: comma-separated TOKENSxHEADSxHEAD_DIM, each >= 1."""
    layouts = []
    for item in text.split(","):
        try:
            tokens, heads, dim = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a layout; write TOKENSxHEADSxHEAD_DIM, e.g. "
                                             f"576x4x32") from None
        if min(tokens, heads, dim) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: tokens, heads and head size must each be >= 1, e.g. 576x4x32")
        layouts.append((tokens, heads, dim))
    return layouts


# --- input files: checked when the command runs, before it writes anything -------------------------------

#: Header keys of PVTT's other safetensors files, and what to call them when one is passed as a model.
WANTED = {
    "teacher": "a teacher checkpoint (.safetensors written by `python -m pvtt_train teacher`; default "
               "models_shipped/pvtt_teacher.safetensors), a diffusers Wan2.1-VACE folder or a ComfyUI-native "
               "Wan2.1-VACE .safetensors",
    "student": "a distilled student (.safetensors written by `python -m pvtt_train distill` or `demo`)",
    "model": "a PVTT teacher or student checkpoint (.safetensors)",
}


def check_model_file(path: str | Path, flag: str, want: str = "model", folder_ok: bool = False,
                     vae: str | Path | None = None) -> dict | None:
    """Refuse, with the fix, a ``flag`` value that is not the kind of model ``want`` names (teacher,
    student or either); reads only headers and configs. With ``folder_ok`` a Wan-VACE model may also
    come as a diffusers folder or a ComfyUI-native file (its VAE: ``vae``, else found beside it).
    Returns the PVTT metadata, or None for a source that carries none (folder, foreign native file)."""
    from .errors import CheckpointError, InputError

    path, wanted = Path(path), WANTED[want]
    if not path.exists():
        raise InputError(f"{flag} {path}: not found; pass the path of {wanted}")
    if path.is_dir() and not folder_ok:
        raise InputError(f"{flag} {path} is a folder; pass {wanted}")
    from .models.checkpoint import read_metadata

    try:
        if folder_ok:  # a diffusers folder, a ComfyUI-native file or a PVTT file: their cheap checks, no weights
            from .models.loading import check_model_source

            meta = check_model_source(path, vae, wanted)
        else:
            meta = read_metadata(path, wanted)
    except CheckpointError as exc:
        raise CheckpointError(f"{flag}: {exc}") from exc
    if meta is None:
        return None
    stage = meta.get("stage")
    if want == "teacher" and stage != "teacher":
        raise CheckpointError(f"{flag}: {path.name} is a distilled student ({stage}), not a teacher; pass {wanted}")
    if want == "student" and stage == "teacher":
        raise CheckpointError(f"{flag}: {path.name} is a teacher, not a distilled student; pass {wanted}")
    return meta


#: Prefix of the empty file ``check_output_folders`` creates and removes at once (a PVTT temp by its name).
WRITE_PROBE_PREFIX = ".pvtt-tmp-write-check-"


def check_student_targets(models_dir: str | Path, stages) -> None:
    """Refuse, before a distillation creates anything, one whose students would replace a file in ``--models-dir``
    that PVTT did not write as a student: a file of the user's (a copy of a shipped model, another format, a link)
    of the same name as a student the run exports (``pvtt_student_<n>step.safetensors``). A student of an earlier
    run is PVTT's own and is replaced, as a re-run means."""
    from .distill.progressive import student_file
    from .errors import InputError
    from .models.checkpoint import read_metadata

    for stage in stages:
        path = Path(models_dir) / student_file(stage)
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            stage_name = None if path.is_symlink() else read_metadata(path).get("stage")
        except (OSError, ValueError):  # read_metadata's CheckpointError is a ValueError
            stage_name = None
        if not (isinstance(stage_name, str) and stage_name.startswith("student")):
            raise InputError(f"--models-dir {models_dir} already holds {path.name}, which is not a student PVTT "
                             f"wrote, and this run would replace it with its {stage.steps}-step student; move that "
                             f"file away, or pass another --models-dir")


def check_output_folders(folders: dict[str, str | Path]) -> None:
    """Prove each ``{flag: folder}`` writable before a command trains a step: a read-only
    ``--models-dir`` must not be found when the first student is exported, after the training. The
    proof is a real write (an empty PVTT-named temp file, removed at once) into the folder, or for a
    folder that does not exist yet into its nearest existing parent (where it will be created), since
    permission bits do not tell about read-only mounts, ACLs or immutable folders. Nothing is created
    here, so a command refused later leaves no folder behind."""
    from .errors import InputError

    for flag, folder in folders.items():
        path = Path(folder)
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        if not existing.is_dir():
            raise InputError(f"{flag} {path} cannot be created: {existing} is a file; pass a folder path")
        try:
            with tempfile.NamedTemporaryFile(prefix=WRITE_PROBE_PREFIX, dir=existing):
                pass
        except OSError as exc:
            if existing != path:
                raise InputError(f"{flag} {path} cannot be created ({existing} is not writable: "
                                 f"{exc.strerror or exc}); create it with write permission, or pass a folder you "
                                 f"can write to") from exc
            raise InputError(f"{flag} {path} is not writable ({exc.strerror or exc}); make it writable (e.g. chmod "
                             f"u+w, or remount it read-write), or pass another folder with {flag}") from exc


def check_encoders(identity: str | None, video: str | None) -> None:
    """Load ``--identity-encoder`` / ``--video-encoder`` files up front (both are small), so a wrong file
    fails before a run writes anything. Folders (CLIP/DINOv2) are checked when the run loads them."""
    from .errors import CheckpointError, InputError

    for flag, path, load in (("--identity-encoder", identity, "identity"), ("--video-encoder", video, "video")):
        if path is None or (load == "identity" and Path(path).is_dir()):
            continue
        try:
            if load == "identity":
                from .identity.encoder import load_identity_encoder

                load_identity_encoder(path)
            else:
                from .eval.video_encoder import load_video_encoder

                load_video_encoder(path)
        except (CheckpointError, InputError) as exc:
            raise type(exc)(f"{flag}: {exc}") from exc


def check_guide_model(teacher: str | Path, teacher_meta: dict | None, guide: str | Path | None,
                      guide_weight: float | None, folder_ok: bool = False) -> None:
    """Refuse, before anything is written, a ``--guide-model`` that cannot guide ``teacher`` (itself, not a
    teacher, another recipe) and a ``--guide-weight`` without one. A guide without PVTT metadata (a diffusers
    folder) is compared with its teacher once both are loaded."""
    from .errors import InputError
    from .sampling.autoguidance import check_guide

    if guide is None:
        if guide_weight is not None:
            raise InputError("--guide-weight sets autoguidance's weight, but no --guide-model was given; pass the "
                             "guide (the teacher's recipe trained for less time) or drop --guide-weight")
        return
    guide = Path(guide)
    if guide.resolve() == Path(teacher).resolve():
        raise InputError(f"--guide-model {guide} is the teacher itself, so autoguidance would change "
                         f"nothing; pass a weaker copy: the teacher's command with a lower --max-steps")
    guide_meta = check_model_file(guide, "--guide-model", "teacher", folder_ok=folder_ok)
    if teacher_meta is not None and guide_meta is not None:
        check_guide(teacher_meta, guide_meta, guide.name)
