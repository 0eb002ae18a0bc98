"""Files of a held-out evaluation: report.json, report.md (the table) and heldout_grid.png, each written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from ..models.checkpoint import write_atomic
from .metrics import MAX_PSNR

CELL = 256
HEADER = 28
COLUMNS = ("product_psnr", "product_ssim", "detail_ratio", "background_psnr", "background_psnr_truth",
           "seam_flicker_ratio", "seconds_per_clip")
HEADINGS = ("product PSNR (dB)", "SSIM", "detail ratio", "bg PSNR vs template", "bg PSNR vs truth",
            "seam flicker", "s / clip")


def _cell(value: float, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # nan, or null read back from JSON
        return "-"
    if key.endswith(("psnr", "psnr_truth")):
        return "exact" if value >= MAX_PSNR else f"{value:.2f}"
    if key == "seconds_per_clip":
        return f"{value:.2f}"
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.1e}"  # a blur's ratio is tiny, not 0


def markdown(report: dict) -> str:
    """The table, one row per method, and what each column means."""
    video = report["video"]
    lines = [(f"# Held-out evaluation: {report['clips']} clips, {video['width']}x{video['height']}, "
             f"{video['frames']} frames (seeds {report['seed']}..{report['seed'] + report['clips'] - 1})"), "",
             "| method | " + " | ".join(HEADINGS) + " |", "|---|" + "---|" * len(HEADINGS)]
    for values in report["methods"].values():
        lines.append(f"| {values['label']} | " + " | ".join(_cell(values[k], k) for k in COLUMNS) + " |")
    template_truth = report["methods"].get("template", {}).get("background_psnr_truth", float("nan"))
    lines += [
        "",
        ("Models run through the nodes (PVTT Load Model, Template Transfer, Background Preserve) with their "
        f"default widgets ({json.dumps(report['nodes'])}); baselines are composited by the same "
        "background_preserve at those defaults."),
        "- product PSNR / SSIM: inside the mask, against the ground truth.",
        ("- detail ratio: Laplacian energy of the luminance inside the mask eroded by 2 px, output over truth "
        "(1 = as sharp as the truth)."),
        "- bg PSNR vs template: outside the mask, against the template (\"exact\" = identical pixels).",
        (f"- bg PSNR vs truth: outside the mask, against the truth; the unchanged template's "
        f"{_cell(template_truth, 'background_psnr_truth')} dB is the ceiling (the new product's anti-aliased rim "
        "lies just outside the mask)."),
        ("- seam flicker: mean |frame change| in the product region at the model's frame-window seams over the same "
        f"inside windows; the ground truth scores {_cell(report['truth_seam_flicker_ratio'], 'seam')}."),
        f"- s / clip: wall time per clip for the whole node chain ({report['threads']} threads).",
    ]
    return "\n".join(lines) + "\n"


def _fit(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] in 0..1 -> uint8 CELL x CELL (nearest when enlarging, area when shrinking)."""
    array = (image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    grow = max(array.shape[:2]) < CELL
    return cv2.resize(array, (CELL, CELL), interpolation=cv2.INTER_NEAREST if grow else cv2.INTER_AREA)


def grid_columns(report: dict) -> list[tuple[str, str, str]]:
    """(part of the grid, key, heading) of each picture column: template, mask, product, paste, the models, truth."""
    models = [("outputs", name, m["label"]) for name, m in report["methods"].items() if m["kind"] == "model"]
    return [("inputs", "template", "template"), ("inputs", "mask", "mask"), ("inputs", "product", "product photo"),
            ("outputs", "paste", "aligned paste"), *models, ("inputs", "truth", "ground truth")]


def grid_image(report: dict, grid: dict) -> np.ndarray:
    """Middle frame of each shown clip, one row per clip, one CELL x CELL picture per column, labelled."""
    columns = grid_columns(report)
    rows = len(grid["inputs"]["template"])
    image = np.full((HEADER + rows * (CELL + 2), len(columns) * (CELL + 2), 3), 255, np.uint8)
    for c, (part, key, heading) in enumerate(columns):
        x = c * (CELL + 2)
        cv2.putText(image, heading[:30], (x + 4, HEADER - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for r, frame in enumerate(grid[part][key]):
            y = HEADER + r * (CELL + 2)
            image[y:y + CELL, x:x + CELL] = _fit(frame)
    return image


def _json_safe(value):
    """NaN (a metric with nothing to measure, e.g. seams of a clip shorter than a window) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(out: Path, report: dict, grid: dict) -> list[Path]:
    """report.json, report.md and heldout_grid.png in ``out``; each appears whole or not at all."""
    out = Path(out)
    written = [out / "report.json", out / "report.md", out / "heldout_grid.png"]
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"
    write_atomic(written[0], lambda tmp: Path(tmp).write_text(text))
    write_atomic(written[1], lambda tmp: Path(tmp).write_text(markdown(report)))
    picture = cv2.cvtColor(grid_image(report, grid), cv2.COLOR_RGB2BGR)

    def write_png(tmp):
        if not cv2.imwrite(str(tmp), picture):
            raise OSError(f"OpenCV could not write {tmp}")

    write_atomic(written[2], write_png)
    return written
