"""Render docs/icon.png (400x400, the Comfy registry's icon size) from the shipped samples.

Top: the template's first frame, its mask and the product photo; bottom: the letters PVTT.
Run: python docs/make_icon.py
"""

from pathlib import Path

import cv2
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
SIZE = 400


def first_frame(path: Path) -> Image.Image:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read a frame from {path}")
    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def main() -> None:
    tiles = [first_frame(ROOT / "samples" / "pvtt_template.mp4"), first_frame(ROOT / "samples" / "pvtt_mask.mp4"),
             Image.open(ROOT / "samples" / "pvtt_product.png").convert("RGB")]
    icon = Image.new("RGB", (SIZE, SIZE), (24, 26, 33))
    tile, gap = 120, 10
    left = (SIZE - 3 * tile - 2 * gap) // 2
    for i, image in enumerate(tiles):
        icon.paste(image.resize((tile, tile), Image.NEAREST), (left + i * (tile + gap), 40))
    draw = ImageDraw.Draw(icon)
    try:
        font = ImageFont.truetype("DejaVuSans-Bold.ttf", 110)
    except OSError:
        font = ImageFont.load_default(size=110)
    box = draw.textbbox((0, 0), "PVTT", font=font)
    draw.text(((SIZE - (box[2] - box[0])) // 2 - box[0], 200), "PVTT", font=font, fill=(235, 235, 240))
    icon.save(ROOT / "docs" / "icon.png", optimize=True)


if __name__ == "__main__":
    main()
