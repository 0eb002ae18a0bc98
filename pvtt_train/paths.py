"""Where PVTT keeps files: the shipped weights inside the pack, and the default models folder."""

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = PACK_ROOT / "models_shipped"
SHIPPED_TEACHER = SHIPPED_MODELS / "pvtt_teacher.safetensors"
DEFAULT_MODELS_DIR = Path("models") / "pvtt"
#: Every temp entry PVTT writes starts with this (``models/checkpoint.py`` write_atomic): a private folder
#: ``.pvtt-tmp-<target>.<random>`` beside the target. Light to import, so the node pack's listing can hide them.
TEMP_PREFIX = ".pvtt-tmp-"
