"""Where PVTT keeps files: the shipped weights inside the pack, and the default models folder."""

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = PACK_ROOT / "models_shipped"
SHIPPED_TEACHER = SHIPPED_MODELS / "pvtt_teacher.safetensors"
#: The paste-residual teacher (the model corrects a lit, aligned paste of the photo) and its autoguidance guide: the
#: same recipe stopped at 500 steps. The demo distils this pair (``demo``'s default; README, issue 14).
SHIPPED_RESIDUAL_TEACHER = SHIPPED_MODELS / "pvtt_teacher_paste_residual.safetensors"
SHIPPED_RESIDUAL_GUIDE = SHIPPED_MODELS / "pvtt_teacher_paste_residual_guide.safetensors"
DEFAULT_MODELS_DIR = Path("models") / "pvtt"
#: Every temp entry PVTT writes starts with this (``models/checkpoint.py`` write_atomic): a private folder
#: ``.pvtt-tmp-<target>.<random>`` beside the target. Light to import, so the node pack's listing can hide them.
TEMP_PREFIX = ".pvtt-tmp-"
