"""Self-describing single-file checkpoints: weights in safetensors, everything else in its metadata.

The header's ``pvtt`` entry is a JSON document with the model config (architecture and backbone),
the flow schedule, the sampler (kind, steps, timesteps, CFG), the training stage and provenance, so
a loader never has to ask which kind of model a file holds. Writes are atomic: a crash leaves either
the old file or the new one, never half of one. Pickle files are refused without being opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import DISK_ERRORS, CheckpointError, DiskFullError
from ..paths import TEMP_PREFIX
from .metadata_schema import FORMAT, FORMAT_VERSION, parse_json_object, validate_metadata
from .model_budget import check_fits, meta_model, model_bytes
from .pvtt_model import build_model
from .safetensors_header import safetensors_header
from .schedule import FlowSchedule
from .weight_checks import check_float_dtypes, check_layout_matches, check_module_finite, largest_tensor_bytes, tensor_layout

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    metadata: dict
    path: Path
    #: Inside ComfyUI, the ``comfy.model_patcher.ModelPatcher`` through which ComfyUI's model management loads,
    #: offloads and unloads ``model`` (``nodes/managed_models.py``); None elsewhere.
    patcher: object = field(default=None, repr=False, compare=False)

    @property
    def schedule(self) -> FlowSchedule:
        return FlowSchedule(**self.metadata["schedule"])

    @property
    def sampler(self) -> dict:
        return self.metadata["sampler"]

    @property
    def video(self) -> dict:
        return self.metadata["video"]


#: safetensors' Rust writer reports I/O errors as text only: "... (os error 28)".
_OS_ERROR_TEXT = re.compile(r"os error (\d+)")


def _disk_errno(exc: BaseException | None) -> int | None:
    """The disk-full/quota/file-size errno behind ``exc`` (or its causes), if that is what it is."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            return exc.errno
        if not isinstance(exc, OSError) and (m := _OS_ERROR_TEXT.search(str(exc))) \
                and int(m.group(1)) in DISK_ERRORS:
            return int(m.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


#: Every temp entry PVTT writes is a private folder ``.pvtt-tmp-<target>.<random>`` (``TEMP_PREFIX``)
#: beside the target. Sweeps remove only such folders, so a user's ``.tmpAb12Cd``, ``.report.final.tmp``
#: or ``.thesis.v3.tmp/`` that merely looks like a temp is never touched. ``tempfile.mkdtemp`` ends the
#: name with 8 characters from this alphabet.
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r".+\.[a-z0-9_]{8}$")


def is_pvtt_temp(name: str) -> bool:
    """Whether a file or folder name is one of PVTT's temp folders (of a write in flight or killed)."""
    return _TEMP_NAME.match(name) is not None


def temp_folder(target: Path) -> Path:
    """A private ``.pvtt-tmp-<target>.<random>`` folder beside ``target``, for a write to be moved into place."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent))


def remove_stale_temps(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temp folders that ``write_atomic`` calls killed mid-write left directly in ``folder``
    (of targets matching the glob ``name``); returns them. Only PVTT's own ``.pvtt-tmp-`` folders go:
    nothing else is touched and no subfolder is searched. A concurrent writer's temp would go too,
    which is why a run folder is locked (``run_lock``) before its folders are swept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for stale in sorted(folder.glob(f"{TEMP_PREFIX}{name}.*")):
        if is_pvtt_temp(stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the finished file into place (fsync'd, same folder).

    ``tmp_path`` has the target's name inside a private ``.pvtt-tmp-<name>.<random>`` folder next to
    it, so whatever the writer itself puts beside its file (safetensors writes through its own temp
    file) is removed with it, and a kill leaves one entry that ``remove_stale_temps`` recognises.
    A write that fails for lack of space (ENOSPC, EDQUOT, EFBIG) raises ``DiskFullError``, which
    says which file and what to do; either way the previous file at ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = temp_folder(path)
    tmp = os.path.join(tmp_dir, path.name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        code = _disk_errno(exc) if isinstance(exc, Exception) else None
        if code is not None:
            raise DiskFullError(code, (
                f"could not write {path}: {DISK_ERRORS[code]}. The previous {path.name}, if any, is untouched "
                f"and nothing half-written was left. Free space on the disk holding {path.parent} (or raise the "
                f"quota / file-size limit), or write elsewhere (for training: another --run-dir or --models-dir), "
                f"then run again (training continues from its last saved state with --resume).")) from exc
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)
    _fsync_folder(path.parent)


def copy_atomic(source: str | Path, dest: str | Path) -> Path:
    """Copy ``source`` to ``dest`` through ``write_atomic``: a kill mid-copy leaves ``dest`` as it was
    (never truncated, never half a file), and a full disk is a ``DiskFullError`` naming ``dest``."""
    write_atomic(Path(dest), lambda tmp: shutil.copyfile(source, tmp))
    return Path(dest)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX). Windows cannot open a folder for syncing, and NTFS
    journals the rename, so there it is skipped."""
    if os.name == "nt":
        return
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | Path, model: torch.nn.Module, metadata: dict) -> Path:
    """Write ``model``'s weights and ``metadata`` (merged with the model config) atomically."""
    meta = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config()}
    for key in ("schedule", "sampler", "video", "stage"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata needs {key!r}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {FORMAT: json.dumps(meta, sort_keys=True)}
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))
    return Path(path)


def file_sha256(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


#: Header keys of PVTT's other safetensors files (encoders, LoRAs), so passing one where a model
#: belongs is named for what it is rather than "no metadata" (nodes/paths.py hides the encoders).
OTHER_FORMATS = {"pvtt_identity_encoder": "a PVTT identity encoder", "pvtt_video_encoder": "a PVTT video encoder",
                 "pvtt_lora": "a PVTT LoRA"}


def read_metadata(path: str | Path, wanted: str | None = None) -> dict:
    """The PVTT metadata of a checkpoint, validated, without loading any weight. ``wanted`` says what
    the caller needs (e.g. "a teacher checkpoint ...") when the file turns out to be another PVTT file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Put .safetensors files in models/pvtt/ "
                              f"or pass the full path.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path.name} is a pickle-format file; PVTT loads only .safetensors "
                              f"(pickles can run code). Convert it with safetensors, then load the result.")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: expected a .safetensors file")
    header, _ = safetensors_header(path, "copy or export it again.")
    other = next((kind for key, kind in OTHER_FORMATS.items() if key in header), None)
    if FORMAT not in header and other is not None:
        raise CheckpointError(f"{path.name} is {other}, not a diffusion model; pass "
                              f"{wanted or 'a PVTT teacher or student checkpoint'}")
    if FORMAT not in header:
        raise CheckpointError(f"{path.name} has no PVTT metadata, so PVTT cannot tell how to rebuild it. "
                              f"Use a checkpoint written by pvtt_train (teacher, distill or demo).")
    fix = "Re-export it with pvtt_train."
    meta = parse_json_object(header[FORMAT], f"{path.name}: its PVTT metadata", fix)
    return validate_metadata(meta, path.name, fix)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = torch.float32) -> LoadedModel:
    """Rebuild the model a checkpoint describes and load its weights (strictly), in ``dtype`` (None: as
    stored; float32 by default, whatever precision the file holds).

    Nothing is allocated until the metadata has passed its schema, the model's memory (counted on the
    meta device) fits, and the header's tensors match the model in float dtype, name and shape. The
    model is then built empty (meta device) and filled tensor by tensor from the file -- no random
    initialisation, no second copy -- each weight checked for NaN/Inf on the way."""
    from .meta_loading import TensorSource, assign_weights, build_empty
    path = Path(path)
    meta = read_metadata(path)
    layout_model = meta_model(lambda: build_model(meta["model"]), path.name)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path.name}: weights could not be read ({exc}); the file may be truncated.") from exc
    with handle:
        layout = tensor_layout(handle)
    check_fits(model_bytes(layout_model) + largest_tensor_bytes(layout), device, path.name)
    check_float_dtypes(layout, path.name)
    check_layout_matches(layout, layout_model.state_dict(), path.name)
    source = TensorSource(path, fix="the file may be truncated; copy or export it again.")
    fix = "the file was edited or written by an incompatible tool; re-export it with pvtt_train."
    model = build_empty(lambda: build_model(meta["model"]))  # buffers computed at construction stay real
    assign_weights(model, source.read({k: k for k in source.keys()}, device),
                   f"{path.name} (architecture in its metadata)", fix, dtype, device)
    check_module_finite(model, path.name)  # after the cast: float64 1e300 is finite, but not in float32
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, metadata=meta, path=path)
