"""Where PVTT keeps files: the shipped weights inside the pack, and the default models folder."""

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = PACK_ROOT / "models_shipped"
SHIPPED_TEACHER = SHIPPED_MODELS / "pvtt_teacher.safetensors"
DEFAULT_MODELS_DIR = Path("models") / "pvtt"
