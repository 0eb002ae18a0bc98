"""Where PVTT's files live: inside ComfyUI its folders, standalone plain folders beside the repo.

Inside ComfyUI, ``folder_paths`` is already imported, so asking it is free; outside (tests, scripts)
it does not exist and the pack falls back to ``PVTT_MODELS_DIR`` / ``PVTT_INPUT_DIR`` /
``PVTT_OUTPUT_DIR``, or ``models/pvtt``, ``input`` and ``output`` in the repo. Media names are
resolved only to files directly inside the allowed folders, so a crafted widget value cannot
read arbitrary files (``../../etc/passwd``). The model list holds only what can be loaded: regular
files, not hidden (an in-flight write's temp lives in a hidden ``.pvtt-tmp-`` folder), whose real path
stays inside a model folder; a name that exists but is refused is told its true reason.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path, PurePosixPath

from ..pvtt_train.errors import InputError
from ..pvtt_train.paths import TEMP_PREFIX

FOLDER_KEY = "pvtt"
MODEL_EXTENSIONS = {".safetensors"}
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"
#: Checkpoints that ship with the pack; searched after models/pvtt so the example workflow runs
#: out of the box, while a user's own file of the same name wins.
SHIPPED_MODELS_DIR = REPO_ROOT / "models_shipped"
SAMPLE_PREFIX = "samples/"
VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _folder_paths():
    """ComfyUI's ``folder_paths`` module, or None when running without ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def default_models_dir() -> Path:
    """The folder users are told to put checkpoints in."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.models_dir) / FOLDER_KEY
    return Path(os.environ.get("PVTT_MODELS_DIR") or REPO_ROOT / "models" / FOLDER_KEY)


def models_root() -> Path:
    """ComfyUI's ``models/`` folder (the parent of ``models/pvtt``): exported graphs go to
    ``models/onnx/pvtt`` and TensorRT engines to ``models/tensorrt/pvtt``."""
    return default_models_dir().parent


def register_model_folder() -> None:
    """Make ``models/pvtt`` (plus the shipped folder) a ComfyUI model folder for .safetensors only.

    An entry already made by ``extra_model_paths.yaml`` keeps its folders; ours are added behind
    the default one and the extension filter is set (a bare entry would accept every file).
    """
    fp = _folder_paths()
    if fp is None:
        return
    default = str(default_models_dir())
    os.makedirs(default, exist_ok=True)
    paths, _ = fp.folder_names_and_paths.get(FOLDER_KEY, ([], set()))
    paths = list(paths)
    for extra in (default, str(SHIPPED_MODELS_DIR)):
        if extra not in paths:
            paths.append(extra)
    fp.folder_names_and_paths[FOLDER_KEY] = (paths, set(MODEL_EXTENSIONS))


def model_dirs() -> list[Path]:
    fp = _folder_paths()
    if fp is not None:
        register_model_folder()
        return [Path(p) for p in fp.get_folder_paths(FOLDER_KEY)]
    return [default_models_dir(), SHIPPED_MODELS_DIR]


#: Metadata keys of PVTT's own helper networks (the identity and video encoders shipped beside the
#: models): they are .safetensors files in a models folder but not models the loader can sample with.
HELPER_NETWORK_KEYS = ("pvtt_identity_encoder", "pvtt_video_encoder")


def is_helper_network(path: Path) -> bool:
    """Whether ``path`` is one of PVTT's encoders; reads only the file's header, once per file version
    (the model list is rebuilt on every page load and every queued prompt). Unreadable or foreign
    files count as candidates, so the loader can say what is wrong with them instead of hiding them."""
    try:
        st = path.stat()
    except OSError:
        return False
    return _header_names_helper(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _header_names_helper(path: str, _size: int, _mtime_ns: int) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as fh:
            metadata = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - corrupt files stay listed; loading them explains the problem
        return False
    return any(key in metadata for key in HELPER_NETWORK_KEYS)


def _in_model_folder(path: Path) -> bool:
    """Whether ``path`` is a part of a diffusers model folder (listed as the folder, not file by file)."""
    return any((parent / "model_index.json").is_file() for parent in path.parents)


def model_folder_names() -> list[str]:
    """Diffusers Wan-VACE model folders (a ``model_index.json`` inside) directly in the models folders."""
    return sorted({p.parent.name for folder in model_dirs() if folder.is_dir()
                   for p in folder.glob("*/model_index.json")})


def vae_dirs() -> list[Path]:
    """Where the VAE of a ComfyUI-native diffusion model is looked for: ComfyUI's ``models/vae``."""
    fp = _folder_paths()
    if fp is not None:
        return [Path(p) for p in fp.get_folder_paths("vae")]
    return [models_root() / "vae"]


def model_names() -> list[str]:
    """Checkpoint names for the loader's dropdown (relative paths, sorted, no duplicates): only files
    ``model_path`` can load, not PVTT's encoders; diffusers model folders are listed by their folder name."""
    fp = _folder_paths()
    if fp is not None:
        register_model_folder()
        listed = ((name, fp.get_full_path(FOLDER_KEY, name)) for name in fp.get_filename_list(FOLDER_KEY))
        files = {name for name, full in listed if full and _refusal(name, Path(full)) is None
                 and not is_helper_network(Path(full)) and not _in_model_folder(Path(full))}
        return sorted(files | set(model_folder_names()))
    names = set()
    for folder in model_dirs():
        names.update(name for name, path in _model_files(folder)
                     if not is_helper_network(path) and not _in_model_folder(path))
    return sorted(names | set(model_folder_names()))


def _model_files(folder: Path):
    """(name, path) of the loadable model files under ``folder``. Hidden folders are not entered, so a
    write in flight (inside ``.pvtt-tmp-...``) or a ``.git`` is never walked."""
    if not folder.is_dir():
        return
    root = folder.resolve()
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for leaf in files:
            path = Path(here) / leaf
            name = path.relative_to(root).as_posix()
            if path.suffix.lower() in MODEL_EXTENSIONS and _refusal(name, path, root) is None:
                yield name, path


def _refusal(name: str, path: Path, root: Path | None = None) -> str | None:
    """Why the existing entry ``path`` (listed as ``name``) cannot be loaded, or None when it can. ``root``
    (standalone folders) also refuses a symlink that leads out of it; inside ComfyUI its own rules on
    links apply."""
    parts = PurePosixPath(name).parts
    if any(part.startswith(TEMP_PREFIX) for part in parts):
        return ("is a temporary file of a checkpoint write that is still in progress (or was interrupted): PVTT "
                f"writes each file inside a hidden {TEMP_PREFIX}... folder and moves it into place when it is "
                "complete. Wait for the write to finish, then pick the finished file.")
    if any(part.startswith(".") for part in parts):
        return ("is hidden (its name, or a folder on its path, starts with '.'), so it is not listed; rename it "
                "without the leading dot to load it.")
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):
        return (f"is a symlink to {os.readlink(path) if path.is_symlink() else path}, which does not exist; fix "
                f"or remove the link.")
    if root is not None and not real.is_relative_to(root):
        return (f"is a symlink to {real}, outside the models folder {root}; PVTT loads only files inside its "
                f"model folders. Copy or move the file itself into {root}.")
    if not stat.S_ISREG(mode):
        return (f"is not a regular file but a {_kind(mode)}; PVTT loads checkpoint files only. Put the "
                f".safetensors file itself there.")
    return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


def model_path(name: str) -> Path:
    """Full path of a checkpoint name from the dropdown. A name that does not exist raises
    FileNotFoundError saying where to put checkpoints; one that exists but cannot be loaded (see
    ``_refusal``) raises InputError with its true reason."""
    fp = _folder_paths()
    refusals = []
    if fp is not None:
        register_model_folder()
        found = fp.get_full_path(FOLDER_KEY, name)
        if found:
            reason = _refusal(name, Path(found))
            if reason is None:
                return Path(found)
            refusals.append(f"{found} {reason}")
    for folder in model_dirs():  # a diffusers model folder, listed by its name
        candidate = _inside(folder, name)
        if candidate is not None and (candidate / "model_index.json").is_file():
            return candidate
    if fp is None:
        for folder in model_dirs():
            root = folder.resolve()
            candidate = Path(os.path.normpath(root / name))
            if not candidate.is_relative_to(root) or candidate == root or not os.path.lexists(candidate):
                continue
            reason = _refusal(candidate.relative_to(root).as_posix(), candidate, root)
            if reason is None:
                return candidate.resolve()
            refusals.append(f"{name!r} in {folder} {reason}")
    if refusals:
        raise InputError(f"PVTT: {refusals[0]}")
    raise FileNotFoundError(missing_model_message(name))


def missing_model_message(name: str | None = None) -> str:
    what = f"checkpoint {name!r} was not found" if name else "no PVTT checkpoint (.safetensors) was found"
    return (f"PVTT: {what}. Put PVTT .safetensors files in {default_models_dir()} (searched: "
            f"{', '.join(str(d) for d in model_dirs())}), then press R in ComfyUI to refresh the list. "
            f"To make one, run `python -m pvtt_train demo --out out/demo --models-dir \"{default_models_dir()}\"` "
            f"in the PVTT folder ({REPO_ROOT}); it distils the 4-step student from the shipped teacher.")


def input_dir() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get("PVTT_INPUT_DIR") or REPO_ROOT / "input")


def output_dir() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("PVTT_OUTPUT_DIR") or REPO_ROOT / "output")


def media_names(extensions: set[str]) -> list[str]:
    """Files in the input folder, then the pack's samples as ``samples/<name>``, for a dropdown."""
    def listing(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)

    return listing(input_dir()) + [SAMPLE_PREFIX + n for n in listing(SAMPLES_DIR)]


#: ComfyUI's annotated names, ``clip.mp4 [output]``: the annotation picks the folder (a plain name is in the
#: input folder). As in ``folder_paths.annotated_filepath``, the space before the bracket is cut too.
ANNOTATIONS = ("input", "output", "temp")


def annotated_folder(name: str) -> tuple[str, Path]:
    """(name without annotation, folder), as ComfyUI's ``folder_paths.annotated_filepath`` reads it. Outside
    ComfyUI the output folder is PVTT's standalone one and temp is a ``temp`` folder beside it."""
    fp = _folder_paths()
    if fp is not None:
        leaf, base = fp.annotated_filepath(name)
        return leaf, Path(base) if base is not None else input_dir()
    for kind in ANNOTATIONS:
        if name.endswith(f"[{kind}]"):
            folders = {"input": input_dir(), "output": output_dir(), "temp": output_dir().parent / "temp"}
            return name[:-len(kind) - 3], folders[kind]
    return name, input_dir()


def resolve_media(name: str) -> Path:
    """Path of a dropdown name: ``samples/<file>`` is a shipped sample; anything else is resolved the way
    ComfyUI's ``get_annotated_filepath`` does (``sub/clip.mp4``, ``clip.mp4 [output]``), so the file an
    upload button put in a subfolder of the input folder loads. The file must lie inside that folder
    (no ``..``, no symlink out of it) and no part of its path may be hidden."""
    if name.startswith(SAMPLE_PREFIX):
        folder, leaf = SAMPLES_DIR, name[len(SAMPLE_PREFIX):]
        path = _inside(folder, leaf)
        ok = path is not None and path.parent == folder.resolve() and path.is_file()
    else:
        leaf, folder = annotated_folder(name)
        path = _inside(folder, leaf)
        ok = (path is not None and path.is_file()
              and not any(part.startswith(".") for part in PurePosixPath(leaf.replace("\\", "/")).parts))
    if not ok:
        raise FileNotFoundError(
            f"PVTT: file {name!r} not found. Put your videos and images in ComfyUI's input folder ({input_dir()}) "
            f"and pick them from the list (or upload one with the node's upload button), or pick one of the "
            f"shipped 'samples/' files.")
    return path


def _inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` resolved, or None if it would leave ``folder``."""
    root = folder.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path != root else None
