"""Foreground masks estimated offline, with no pretrained network.

Industrial and medical images show one object on a fairly plain backdrop, and the image border is mostly
backdrop. So: model the backdrop colour as a smooth (quadratic) field fitted to the border pixels in Lab space,
take each pixel's colour distance to it, threshold with Otsu, clean up (close, fill holes, drop specks, keep a
safety margin). When no clear object separates from the backdrop (textures, objects filling the frame),
the whole image is foreground.
"""
import hashlib
import os
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu

from datasets.images import read_rgb
from utils.io import atomic_write

WORK_SIZE = 256        # estimation resolution (masks are resized to the image afterwards)
BORDER = 0.06          # border band used as backdrop samples, fraction of the side
MIN_DISTANCE = 8.0     # Lab distance below which a pixel is never foreground (noise, shading)
MARGIN = 0.03          # dilation margin, fraction of the side: better a bit too much than a cut object
MIN_AREA, MAX_AREA = 0.01, 0.95


def _poly_terms(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], axis=-1)


def estimate_foreground(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool foreground mask."""
    h, w = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((WORK_SIZE, WORK_SIZE), Image.BILINEAR))
    lab = rgb2lab(small)
    s = WORK_SIZE
    yy, xx = np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij")
    band = max(2, int(BORDER * s))
    border = np.zeros((s, s), bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    terms = _poly_terms(yy, xx)
    # robust fit: refit on the border pixels that agree with the first fit (objects touching the border)
    keep = border.copy()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(terms[keep], lab[keep], rcond=None)
        resid = np.linalg.norm(lab - terms @ coef, axis=-1)
        keep = border & (resid <= max(np.percentile(resid[border], 70), MIN_DISTANCE / 2))
    distance = ndimage.gaussian_filter(resid, 1.0)
    try:
        threshold = max(threshold_otsu(distance), MIN_DISTANCE)
    except ValueError:  # constant image
        return np.ones((h, w), bool)
    fg = distance > threshold
    fg = ndimage.binary_closing(fg, np.ones((5, 5), bool), iterations=2)
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n:
        sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
        fg = np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_AREA * s * s))
    area = fg.mean()
    if area < MIN_AREA or area > MAX_AREA:
        return np.ones((h, w), bool)
    fg = ndimage.binary_dilation(fg, np.ones((3, 3), bool), iterations=max(1, int(MARGIN * s)))
    return np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0


def default_cache_dir() -> str:
    return os.environ.get("PATCHGUARD_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "patchguard"))


def cached_foreground_path(image_path: str, cache_dir: Optional[str] = None) -> str:
    """Cache file for one image's estimated mask, keyed by its absolute path, size and modification time."""
    st = os.stat(image_path)
    key = f"{os.path.abspath(image_path)}|{st.st_size}|{st.st_mtime_ns}|v1"
    digest = hashlib.sha1(key.encode()).hexdigest()
    return os.path.join(cache_dir or default_cache_dir(), "foreground", digest[:2], digest + ".png")


def foreground_for(image_path: str, cache_dir: Optional[str] = None) -> str:
    """Path of the estimated foreground mask of an image (at its full size), estimating and caching it once."""
    path = cached_foreground_path(image_path, cache_dir)
    if not os.path.exists(path):
        mask = Image.fromarray(estimate_foreground(read_rgb(image_path)).astype(np.uint8) * 255)
        atomic_write(path, lambda tmp: mask.save(tmp, format="PNG"))
    return path


def coverage(foreground: np.ndarray, defect: np.ndarray) -> float:
    """Share of the defect pixels that lie inside the foreground."""
    return float((foreground & defect).sum() / max(defect.sum(), 1))
