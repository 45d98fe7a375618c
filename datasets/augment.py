"""Patch distortions for pseudo-anomalies, three severity levels (official ranges, DESIGN.md).

Every op takes and returns an RGB uint8 array (h, w, 3) and draws from the caller's numpy Generator,
so a sample's distortion depends only on its seed.
"""
import io
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter, map_coordinates
import torchvision.transforms.functional as TF

Op = Callable[[np.ndarray, np.random.Generator, str], np.ndarray]

# level -> parameter ranges; a (lo, hi) pair means U(lo, hi)
JITTER = {"light": dict(brightness=(0.1, 0.1), contrast=(0.1, 0.1), saturation=(0.1, 0.1), hue=(0.1, 0.1)),
          "medium": dict(brightness=(0.4, 0.4), contrast=(0.4, 0.4), saturation=(0.4, 0.4), hue=(0.3, 0.3)),
          "heavy": dict(brightness=(0.8, 1.0), contrast=(0.8, 1.0), saturation=(0.8, 1.0), hue=(0.5, 0.5))}
BLUR = {"light": (0.2, 0.5), "medium": (0.8, 1.5), "heavy": (2.0, 3.0)}
ELASTIC = {"light": (10, 20), "medium": (20, 40), "heavy": (40, 100)}
SWIRL = {"light": (0.5, 1.0), "medium": (1.0, 1.5), "heavy": (1.5, 2.0)}
JPEG = {"light": (30, 50), "medium": (20, 30), "heavy": (1, 20)}
TORN = {"light": (1, 3), "medium": (5, 10), "heavy": (10, 20)}
PERLIN_SCALE = {"light": (20, 50), "medium": (10, 20), "heavy": (5, 10)}
PERLIN_THRESHOLD = {"light": (200, 255), "medium": (150, 200), "heavy": (128, 150)}
ERASE_AREA = {"light": (0.01, 0.05), "medium": (0.05, 0.1), "heavy": (0.1, 0.2)}
ERASE_COUNT = {"light": (1, 2), "medium": (2, 3), "heavy": (3, 5)}


def color_jitter(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    """torchvision ColorJitter on a PIL image, its four strengths drawn independently from the level's ranges."""
    b, c, s = (rng.uniform(*JITTER[level][k]) for k in ("brightness", "contrast", "saturation"))
    h = rng.uniform(*JITTER[level]["hue"])
    adjust = [lambda x: TF.adjust_brightness(x, rng.uniform(max(0.0, 1 - b), 1 + b)),
              lambda x: TF.adjust_contrast(x, rng.uniform(max(0.0, 1 - c), 1 + c)),
              lambda x: TF.adjust_saturation(x, rng.uniform(max(0.0, 1 - s), 1 + s)),
              lambda x: TF.adjust_hue(x, rng.uniform(-h, h))]
    pil = Image.fromarray(img)
    for i in rng.permutation(4):  # ColorJitter's random order
        pil = adjust[i](pil)
    return np.asarray(pil)


def blur(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR[level]))))


def elastic(img: np.ndarray, rng: np.random.Generator, level: str, sigma: float = 3.0) -> np.ndarray:
    """Random displacement field, Gaussian-smoothed, scaled by alpha, reflected at the borders.

    The official code reseeds this field identically on every call; we draw a fresh one (see README).
    """
    h, w = img.shape[:2]
    alpha = rng.uniform(*ELASTIC[level])
    dx = gaussian_filter(rng.random((h, w)) * 2 - 1, sigma, mode="reflect") * alpha
    dy = gaussian_filter(rng.random((h, w)) * 2 - 1, sigma, mode="reflect") * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + dy, xx + dx]
    return np.stack([map_coordinates(img[..., c], coords, order=1, mode="reflect") for c in range(3)], axis=-1)


def remap_bilinear(img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """OpenCV's remap(INTER_LINEAR, BORDER_CONSTANT 0) for uint8: coordinates on a 1/32 grid, rounded result."""
    h, w = img.shape[:2]
    qx, qy = np.round(map_x * 32).astype(np.int64), np.round(map_y * 32).astype(np.int64)
    x0, y0 = qx >> 5, qy >> 5
    fx, fy = ((qx & 31) / 32.0)[..., None], ((qy & 31) / 32.0)[..., None]

    def at(y, x):
        inside = ((x >= 0) & (x < w) & (y >= 0) & (y < h))[..., None]
        return np.where(inside, img[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)].astype(np.float64), 0.0)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return np.clip(np.floor(top * (1 - fy) + bottom * fy + 0.5), 0, 255).astype(np.uint8)


def swirl(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    return swirl_with_strength(img, rng.uniform(*SWIRL[level]))


def swirl_with_strength(img: np.ndarray, strength: float) -> np.ndarray:
    """Official swirl: the angle falls off as a Gaussian (sigma = min(h, w) // 3) around the patch centre."""
    h, w = img.shape[:2]
    cx, cy = w // 2, h // 2
    y, x = np.indices((h, w))
    x, y = x - cx, y - cy
    sigma = max(min(h, w) // 3, 1)  # the official code divides by zero below 3 px; a 1 px fall-off there
    angle = strength * np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    map_x = np.clip(cx + x * np.cos(angle) - y * np.sin(angle), 0, w - 1).astype(np.float32)
    map_y = np.clip(cy + x * np.sin(angle) + y * np.cos(angle), 0, h - 1).astype(np.float32)
    return remap_bilinear(img, map_x, map_y)


def jpeg(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(*JPEG[level], endpoint=True)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def torn_lines(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    """1 px lines between random pixels, each channel of the colour 0 or 255 (8 colours)."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(*TORN[level], endpoint=True))):
        x0, y0, x1, y1 = rng.integers(0, w), rng.integers(0, h), rng.integers(0, w), rng.integers(0, h)
        colour = tuple(int(c) for c in rng.choice([0, 255], 3))
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=colour, width=1)
    return np.asarray(pil)


def perlin_noise(shape: Tuple[int, int], cell: float, rng: np.random.Generator, octaves: int = 6) -> np.ndarray:
    """Fractal gradient (Perlin) noise in [0, 1], vectorised over pixels; `cell` is the first octave's period."""
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    total, amplitude, norm = np.zeros(shape), 1.0, 0.0
    for _ in range(octaves):
        y, x = yy / cell, xx / cell
        gy, gx = int(y.max()) + 2, int(x.max()) + 2
        angles = rng.uniform(0, 2 * np.pi, (gy, gx))
        grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        fy, fx = y - y0, x - x0

        def dot(oy, ox):
            g = grad[y0 + oy, x0 + ox]
            return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

        fade_y, fade_x = (6 * fy ** 5 - 15 * fy ** 4 + 10 * fy ** 3), (6 * fx ** 5 - 15 * fx ** 4 + 10 * fx ** 3)
        top = dot(0, 0) + fade_x * (dot(0, 1) - dot(0, 0))
        bottom = dot(1, 0) + fade_x * (dot(1, 1) - dot(1, 0))
        total += amplitude * (top + fade_y * (bottom - top))
        norm += amplitude
        amplitude *= 0.5
        cell = max(cell / 2, 1.0)
    total /= norm
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def perlin_blob(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    """Fill the region where Perlin noise (min-max scaled to 0..255) exceeds an integer threshold with one colour."""
    noise = perlin_noise(img.shape[:2], rng.uniform(*PERLIN_SCALE[level]), rng) * 255
    region = noise > rng.integers(*PERLIN_THRESHOLD[level], endpoint=True)
    out = img.copy()
    out[region] = rng.integers(0, 255, 3)  # official: np.random.randint(0, 255), i.e. 0..254
    return out


def random_erasing(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    """1..n rectangles of one area (drawn once per call), random aspect, each one random colour (official sizing)."""
    h, w = img.shape[:2]
    out = img.copy()
    area = int(rng.uniform(*ERASE_AREA[level]) * h * w)
    for _ in range(int(rng.integers(*ERASE_COUNT[level], endpoint=True))):
        aspect = rng.uniform(0.3, 3.3)
        eh = int(np.sqrt(area / aspect))
        ew = int(aspect * eh)
        x, y = rng.integers(0, max(0, w - ew), endpoint=True), rng.integers(0, max(0, h - eh), endpoint=True)
        out[y:y + eh, x:x + ew] = rng.integers(0, 255, 3)
    return out


LEVEL_OPS: Dict[str, List[Op]] = {
    "light": [blur, elastic, swirl],
    "medium": [blur, swirl, jpeg, elastic],
    "heavy": [elastic, torn_lines, jpeg, perlin_blob, swirl, random_erasing, blur],
}
LEVEL_MAX_OPS = {"light": 1, "medium": 2, "heavy": 4}
LEVEL_PROBS = {"light": 0.2, "medium": 0.2, "heavy": 0.6}


def distort(patch: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, List[str]]:
    """Pick a severity, apply 0..k of its ops (without replacement) plus ColorJitter at a random position."""
    levels = list(LEVEL_PROBS)
    level = levels[rng.choice(len(levels), p=list(LEVEL_PROBS.values()))]
    ops = LEVEL_OPS[level]
    n = int(rng.integers(0, LEVEL_MAX_OPS[level], endpoint=True))
    chosen = [ops[i] for i in rng.choice(len(ops), size=n, replace=False)]
    chosen.insert(int(rng.integers(0, len(chosen), endpoint=True)), color_jitter)
    for op in chosen:
        patch = op(patch, rng, level)
    return patch, [level] + [op.__name__ for op in chosen]
