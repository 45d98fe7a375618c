"""The built-in demo set: rendered objects with scratches, stains and holes, in the MVTec AD layout.

Written once to disk (PNG images, ground-truth masks and foreground masks) so every mode reads it like real data.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from utils.io import atomic_write

CLASS_NAME = "widget"
SIZE = 128
COUNTS = {"train/good": 60, "test/good": 12, "test/scratch": 8, "test/stain": 8, "test/hole": 8}


def _render_object(rng: np.random.Generator):
    """A textured grey background with a blue rounded block carrying three stripes; returns (image, foreground)."""
    noise = rng.normal(0, 6, (SIZE, SIZE, 1))
    img = Image.fromarray(np.clip(60 + noise, 0, 255).astype(np.uint8).repeat(3, 2))
    cx, cy = SIZE / 2 + rng.uniform(-8, 8, 2)
    w, h = rng.uniform(70, 84), rng.uniform(56, 68)
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    fg = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(fg).rounded_rectangle(box, radius=12, fill=255)
    colour = tuple(int(c) for c in np.array([70, 110, 190]) + rng.integers(-8, 9, 3))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle(box, radius=12, fill=colour)
    for k in range(3):  # stripes
        y = box[1] + h * (k + 1) / 4
        draw.line([box[0] + 8, y, box[2] - 8, y], fill=tuple(min(255, c + 45) for c in colour), width=3)
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img, np.asarray(fg) > 0


def _add_defect(img: Image.Image, fg: np.ndarray, kind: str, rng: np.random.Generator):
    ys, xs = np.nonzero(fg)
    i = rng.integers(len(ys))
    cy, cx = ys[i], xs[i]
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(18, 30)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        line = [cx - dx, cy - dy, cx + dx, cy + dy]
        draw.line(line, fill=(235, 235, 220), width=3)
        mdraw.line(line, fill=255, width=3)
    elif kind == "stain":
        r = rng.uniform(6, 10, 2)
        ellipse = [cx - r[0], cy - r[1], cx + r[0], cy + r[1]]
        draw.ellipse(ellipse, fill=(150, 90, 40))
        mdraw.ellipse(ellipse, fill=255)
    else:  # hole: background shows through
        r = rng.uniform(6, 9)
        ellipse = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(ellipse, fill=(45, 45, 45))
        mdraw.ellipse(ellipse, fill=255)
    return img, np.asarray(mask) > 0


def build_demo(root: str, seed: int = 0) -> str:
    """Write the demo class under root/widget (skipped when complete). Returns the class folder."""
    class_dir = os.path.join(root, CLASS_NAME)
    marker = os.path.join(class_dir, ".complete")
    if os.path.exists(marker):
        return class_dir
    rng = np.random.default_rng(seed)
    for folder, n in COUNTS.items():
        defect = folder.split("/")[1]
        for k in range(n):
            img, fg = _render_object(rng)
            stem = f"{k:03d}"
            if defect != "good":
                img, mask = _add_defect(img, fg, defect, rng)
                _save(os.path.join(class_dir, "ground_truth", defect, f"{stem}_mask.png"), mask)
            if folder == "train/good":
                _save(os.path.join(class_dir, "train", "foreground_mask", f"{stem}.png"), fg)
            _save(os.path.join(class_dir, folder, f"{stem}.png"), img)
    atomic_write(marker, lambda tmp: open(tmp, "w").close())
    return class_dir


def _save(path: str, picture) -> None:
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture.astype(np.uint8) * 255)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
