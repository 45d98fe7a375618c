"""Attention-guided cut-and-paste (CaSA): a patch is cut where the ViT's attention is high and pasted at another
high-attention point, with random size, aspect ratio, rotation and colour jitter.

The saliency map (the model's own CLS-to-patch attention, recomputed during training) comes in as data, one
(gh, gw) array per image; None means uniform sampling (warm-up). Points are drawn in proportion to it.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

from datasets.pseudo_anomaly import rotate_and_paste


@dataclass(frozen=True)
class CutPasteRanges:
    area: Tuple[float, float] = (0.02, 0.15)      # patch area as a share of the image
    aspect: Tuple[float, float] = (0.3, 3.3)      # width / height, drawn log-uniformly
    rotation: float = 45.0                        # degrees, U(-r, r)
    jitter: float = 0.1                           # ColorJitter strength (brightness, contrast, saturation, hue)


def sample_point(weights: np.ndarray, rng: np.random.Generator) -> Tuple[int, int]:
    """(y, x) in pixels of an (H, W) weight map, drawn in proportion to it (uniform when it sums to 0)."""
    flat = weights.reshape(-1).astype(np.float64)
    total = flat.sum()
    i = rng.choice(flat.size, p=flat / total) if total > 0 else rng.integers(flat.size)
    return divmod(int(i), weights.shape[1])


def upsample(saliency: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(saliency.astype(np.float32), mode="F").resize(size[::-1], Image.BILINEAR))


class AttentionCutPaste:
    """`guided=False`: points drawn uniformly over the image whatever guide is given (the ablation without guidance)."""

    def __init__(self, ranges: CutPasteRanges = CutPasteRanges(), guided: bool = True):
        self.ranges, self.guided = ranges, guided

    def __call__(self, image: np.ndarray, saliency: Optional[np.ndarray], rng: np.random.Generator
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8, saliency (gh, gw) >= 0 or None -> (image, mask (H, W) bool)."""
        h, w = image.shape[:2]
        if not self.guided:
            saliency = None
        weights = np.ones((h, w)) if saliency is None else np.clip(upsample(saliency, (h, w)), 0, None)
        r = self.ranges
        area = rng.uniform(*r.area) * h * w
        aspect = np.exp(rng.uniform(np.log(r.aspect[0]), np.log(r.aspect[1])))
        pw = int(np.clip(round(np.sqrt(area * aspect)), 2, w))
        ph = int(np.clip(round(np.sqrt(area / aspect)), 2, h))
        (sy, sx), (dy, dx) = sample_point(weights, rng), sample_point(weights, rng)
        x1, y1 = int(np.clip(sx - pw // 2, 0, w - pw)), int(np.clip(sy - ph // 2, 0, h - ph))
        x2, y2 = int(np.clip(dx - pw // 2, 0, w - pw)), int(np.clip(dy - ph // 2, 0, h - ph))
        patch = self._jitter(image[y1:y1 + ph, x1:x1 + pw], rng)
        return rotate_and_paste(image, patch, x2, y2, rng.uniform(-r.rotation, r.rotation))

    def _jitter(self, patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.ranges.jitter
        if s <= 0:
            return patch.copy()
        pil = Image.fromarray(patch)
        pil = TF.adjust_brightness(pil, rng.uniform(1 - s, 1 + s))
        pil = TF.adjust_contrast(pil, rng.uniform(1 - s, 1 + s))
        pil = TF.adjust_saturation(pil, rng.uniform(1 - s, 1 + s))
        pil = TF.adjust_hue(pil, rng.uniform(-min(s, 0.5), min(s, 0.5)))
        return np.asarray(pil)
