"""Foreground-aware pseudo-anomalies: cut a patch from the object, distort and rotate it, paste it back on the object."""
from typing import Optional, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation

from datasets.augment import distort


def _runs(fg: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Length of the foreground run starting at each pixel going right, and going down."""
    def run_along_last(a):
        out = np.zeros(a.shape, dtype=np.int32)
        acc = np.zeros(a.shape[:-1], dtype=np.int32)
        for x in range(a.shape[-1] - 1, -1, -1):  # one pass per column, vectorised over rows
            acc = np.where(a[..., x], acc + 1, 0)
            out[..., x] = acc
        return out
    return run_along_last(fg), run_along_last(fg.T).T


class PseudoAnomalyGenerator:
    """Official sampling and paste procedure (DESIGN.md, "Pseudo-anomaly generator in detail").

    Args:
        min_size: the class's lower bound on patch width/height in pixels.
        dilation_iters: 3x3 dilations of the foreground mask before sampling (official: 10).
    """

    def __init__(self, min_size: int, dilation_iters: int = 10, tries: int = 250, size_tries: int = 10):
        self.min_size = max(1, int(min_size))
        self.dilation_iters, self.tries, self.size_tries = dilation_iters, tries, size_tries

    def __call__(self, image: np.ndarray, foreground: Optional[np.ndarray], rng: np.random.Generator
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8, foreground (H, W) bool or None (whole image) -> (image, mask (H, W) bool)."""
        h, w = image.shape[:2]
        fg = np.ones((h, w), bool) if foreground is None else foreground.astype(bool)
        if self.dilation_iters and not fg.all():
            fg = binary_dilation(fg, np.ones((3, 3), bool), iterations=self.dilation_iters)
        if not fg.any():
            fg = np.ones((h, w), bool)
        x1, y1, x2, y2, pw, ph = self._sample_boxes(fg, rng)
        patch = image[y1:y1 + ph, x1:x1 + pw].copy()
        patch, _ = distort(patch, rng)
        return self._paste(image, patch, x2, y2, rng)

    def _sample_boxes(self, fg: np.ndarray, rng: np.random.Generator):
        h, w = fg.shape
        lb = min(self.min_size, h, w)
        right, down = _runs(fg)
        integral = np.pad(fg.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

        def inside(x, y, bw, bh):
            total = integral[y + bh, x + bw] - integral[y, x + bw] - integral[y + bh, x] + integral[y, x]
            return total == bw * bh

        ys, xs = np.nonzero(fg)
        for _ in range(self.tries):
            i, j = rng.integers(0, len(ys), 2)
            (y1, x1), (y2, x2) = (ys[i], xs[i]), (ys[j], xs[j])
            max_w, max_h = min(right[y1, x1], right[y2, x2]), min(down[y1, x1], down[y2, x2])
            for _ in range(self.size_tries):
                bw, bh = int(rng.integers(0, max_w, endpoint=True)), int(rng.integers(0, max_h, endpoint=True))
                fits = inside(x1, y1, bw, bh) and inside(x2, y2, bw, bh)
                if fits:
                    break
            if fits and bw >= lb and bh >= lb and x2 + bw <= w and y2 + bh <= h:
                return x1, y1, x2, y2, bw, bh
        # fallback (official): random points with the lower-bound size
        x1, x2 = rng.integers(0, w - lb, 2, endpoint=True)
        y1, y2 = rng.integers(0, h - lb, 2, endpoint=True)
        return int(x1), int(y1), int(x2), int(y2), lb, lb

    @staticmethod
    def _paste(image: np.ndarray, patch: np.ndarray, x: int, y: int, rng: np.random.Generator):
        return rotate_and_paste(image, patch, x, y, rng.uniform(-90, 90))


def rotate_and_paste(image: np.ndarray, patch: np.ndarray, x: int, y: int, angle: float):
    """Official paste: rotate with expand (PIL's default nearest resampling), resize back bicubic, and paste the
    patch opaque where its alpha is > 0; that binary mask is also the pixel mask.

    A soft alpha blend would leave a labelled fringe that barely differs from the clean image, teaching the model
    that changes inside the attack budget are anomalies.
    """
    ph, pw = patch.shape[:2]
    rotated = Image.fromarray(patch).convert("RGBA").rotate(angle, expand=True).resize((pw, ph), Image.BICUBIC)
    inside = np.asarray(rotated.getchannel("A")) > 0
    out = Image.fromarray(image)
    out.paste(rotated.convert("RGB"), (x, y), Image.fromarray(inside.astype(np.uint8) * 255))
    mask = np.zeros(image.shape[:2], bool)
    mask[y:y + ph, x:x + pw] = inside[:image.shape[0] - y, :image.shape[1] - x]
    return np.asarray(out), mask


def patch_labels(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W) bool pixel mask -> (N,) float32: a patch is anomalous when any of its pixels is (row-major)."""
    h, w = mask.shape
    gh, gw = h // patch_size, w // patch_size
    blocks = mask[:gh * patch_size, :gw * patch_size].reshape(gh, patch_size, gw, patch_size)
    return blocks.any(axis=(1, 3)).reshape(-1).astype(np.float32)
