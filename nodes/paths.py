"""Where PVTT's files live: inside ComfyUI its folders, standalone plain folders beside the repo.

Inside ComfyUI, ``folder_paths`` is already imported, so asking it is free; outside (tests, scripts)
it does not exist and the pack falls back to ``PVTT_MODELS_DIR`` / ``PVTT_INPUT_DIR`` /
``PVTT_OUTPUT_DIR``, or ``models/pvtt``, ``input`` and ``output`` in the repo. Media names are
resolved only to files directly inside the allowed folders, so a crafted widget value cannot
read arbitrary files (``../../etc/passwd``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

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
    """Checkpoint names for the loader's dropdown (relative paths, sorted, no duplicates), without
    PVTT's encoders; diffusers model folders are listed by their folder name."""
    fp = _folder_paths()
    if fp is not None:
        register_model_folder()
        files = {name for name in fp.get_filename_list(FOLDER_KEY)
                 if not is_helper_network(path := Path(fp.get_full_path(FOLDER_KEY, name)))
                 and not _in_model_folder(path)}
        return sorted(files | set(model_folder_names()))
    names = set()
    for folder in model_dirs():
        if folder.is_dir():
            names.update(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                         if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS and not is_helper_network(p)
                         and not _in_model_folder(p))
    return sorted(names | set(model_folder_names()))


def model_path(name: str) -> Path:
    """Full path of a checkpoint name from the dropdown; FileNotFoundError says where to put it."""
    fp = _folder_paths()
    if fp is not None:
        register_model_folder()
        found = fp.get_full_path(FOLDER_KEY, name)
        if found:
            return Path(found)
    for folder in model_dirs():
        candidate = _inside(folder, name)
        if candidate is None:
            continue
        if (fp is None and candidate.is_file()) or (candidate / "model_index.json").is_file():
            return candidate
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


def resolve_media(name: str) -> Path:
    """Path of a dropdown name; only files directly in the input or samples folder resolve."""
    folder, leaf = (SAMPLES_DIR, name[len(SAMPLE_PREFIX):]) if name.startswith(SAMPLE_PREFIX) else (input_dir(), name)
    path = _inside(folder, leaf)
    if path is None or path.parent != folder.resolve() or not path.is_file():
        raise FileNotFoundError(
            f"PVTT: file {name!r} not found. Put your videos and images in ComfyUI's input folder "
            f"({input_dir()}) and pick them from the list, or pick one of the shipped 'samples/' files.")
    return path


def _inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` resolved, or None if it would leave ``folder``."""
    root = folder.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path != root else None
