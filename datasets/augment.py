"""Patch distortions for pseudo-anomalies, three severity levels (official ranges, DESIGN.md).

Every op takes and returns an RGB uint8 array (h, w, 3) and draws from the caller's numpy Generator,
so a sample's distortion depends only on its seed.
"""
import io
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter, map_coordinates
from skimage.transform import swirl as sk_swirl
import torch
import torchvision.transforms.functional as TF

Op = Callable[[np.ndarray, np.random.Generator, str], np.ndarray]

# level -> parameter ranges; a (lo, hi) pair means U(lo, hi)
JITTER = {"light": ((0.1, 0.1), 0.1), "medium": ((0.4, 0.4), 0.3), "heavy": ((0.8, 1.0), 0.5)}
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
    """Brightness, contrast, saturation and hue in random order (torchvision ColorJitter semantics)."""
    (lo, hi), hue = JITTER[level]
    strength = rng.uniform(lo, hi)
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    ops = [lambda x: TF.adjust_brightness(x, rng.uniform(max(0, 1 - strength), 1 + strength)),
           lambda x: TF.adjust_contrast(x, rng.uniform(max(0, 1 - strength), 1 + strength)),
           lambda x: TF.adjust_saturation(x, rng.uniform(max(0, 1 - strength), 1 + strength)),
           lambda x: TF.adjust_hue(x, rng.uniform(-hue, hue))]
    for i in rng.permutation(4):
        t = ops[i](t)
    return t.permute(1, 2, 0).numpy()


def blur(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR[level]))))


def elastic(img: np.ndarray, rng: np.random.Generator, level: str, sigma: float = 3.0) -> np.ndarray:
    """Random displacement field, Gaussian-smoothed, scaled by alpha (fresh field every call)."""
    h, w = img.shape[:2]
    alpha = rng.uniform(*ELASTIC[level])
    dx = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
    dy = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)]
    out = np.stack([map_coordinates(img[..., c], coords, order=1) for c in range(3)], axis=-1)
    return out.astype(np.uint8)


def swirl(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    h, w = img.shape[:2]
    out = sk_swirl(img, strength=rng.uniform(*SWIRL[level]), radius=max(h, w) / 2, preserve_range=True, mode="reflect")
    return out.astype(np.uint8)


def jpeg(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(*JPEG[level], endpoint=True)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def torn_lines(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    """1 px black or white lines between random points."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(*TORN[level], endpoint=True))):
        colour = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
        draw.line([tuple(rng.uniform(0, (w, h))), tuple(rng.uniform(0, (w, h)))], fill=colour, width=1)
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
    """Fill the region where Perlin noise (0..255) exceeds a threshold with one random colour."""
    noise = perlin_noise(img.shape[:2], rng.uniform(*PERLIN_SCALE[level]), rng) * 255
    region = noise > rng.uniform(*PERLIN_THRESHOLD[level])
    out = img.copy()
    out[region] = rng.integers(0, 256, 3)
    return out


def random_erasing(img: np.ndarray, rng: np.random.Generator, level: str) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    for _ in range(int(rng.integers(*ERASE_COUNT[level], endpoint=True))):
        area = rng.uniform(*ERASE_AREA[level]) * h * w
        aspect = rng.uniform(0.3, 3.3)
        eh = max(1, min(h, int(round(np.sqrt(area * aspect)))))
        ew = max(1, min(w, int(round(np.sqrt(area / aspect)))))
        y, x = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
        out[y:y + eh, x:x + ew] = rng.integers(0, 256, 3)
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
