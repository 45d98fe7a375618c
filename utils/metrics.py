"""Detection and localization metrics on raw scores (no sigmoid: only the order of scores matters).

All pixel metrics come from one sort of the whole test set: each pixel's score and ground-truth region id are
packed into one 64-bit key, so a single (vectorised) integer sort orders them. A full MVTec AD test set
(1725 maps of 224x224, 87M pixels) takes seconds. Ties are exact: pixels with the same score switch together.
"""
from typing import Dict, Optional

import numpy as np
from scipy import ndimage

from utils.errors import UserError


def _float_keys(x: np.ndarray) -> np.ndarray:
    """float32 -> uint64 whose order is the float order (sign-magnitude to offset binary)."""
    u = (np.asarray(x, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0 folds -0.0 into +0.0
    return np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000)).astype(np.uint64)


class _Sorted:
    """Scores sorted high to low together with a group id per element (0 = negative, k > 0 = positive group k)."""

    def __init__(self, scores: np.ndarray, groups: np.ndarray):
        keys = (_float_keys(scores.ravel()) << np.uint64(32)) | groups.ravel().astype(np.uint64)
        keys = np.sort(keys)[::-1]
        self.groups = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        values = keys >> np.uint64(32)
        self.last_of_tie = np.r_[values[1:] != values[:-1], True]
        self.count = np.flatnonzero(self.last_of_tie) + 1.0  # elements scoring >= each distinct threshold

    def cumulative(self, table: np.ndarray) -> np.ndarray:
        """Sum of table[group] over the elements scoring >= each distinct threshold, highest first."""
        return np.cumsum(table[self.groups], dtype=np.float64)[self.last_of_tie]

    def positives_negatives(self):
        """Cumulative counts of positive (group > 0) and negative elements at each distinct threshold."""
        if not hasattr(self, "_tp_fp"):
            tp = np.cumsum(self.groups > 0, dtype=np.float64)[self.last_of_tie]
            self._tp_fp = (tp, self.count - tp)
        return self._tp_fp


def _check(scores, labels):
    s = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels).astype(bool)
    if s.size != y.size:
        raise ValueError(f"scores and labels differ in size: {s.shape} vs {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s.reshape(y.shape), y


def _curve_metrics(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> Dict[str, float]:
    recall = tp / n_pos
    d_fpr = np.diff(fp, prepend=0.0) / n_neg
    auroc = float(np.dot(d_fpr, recall) - 0.5 * np.dot(d_fpr, np.diff(recall, prepend=0.0)))  # trapezoid from (0, 0)
    precision = tp / (tp + fp)  # tp + fp >= 1 at every threshold
    ap = float(np.dot(np.diff(recall, prepend=0.0), precision))  # scikit-learn's step definition
    f1 = 2 * tp / (tp + fp + n_pos)  # = 2 P R / (P + R)
    return {"auroc": auroc, "ap": ap, "f1_max": float(f1.max())}


def curve_metrics(scores, labels) -> Dict[str, float]:
    """AUROC, average precision and F1-max (same values as scikit-learn) from one sort."""
    s, y = _check(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return {"auroc": float("nan"), "ap": float("nan"), "f1_max": float("nan")}
    return _curve_metrics(*_Sorted(s, y).positives_negatives(), n_pos, n_neg)


def auroc(scores, labels) -> float:
    return curve_metrics(scores, labels)["auroc"]


def _regions(masks: np.ndarray):
    """Per-pixel region id (8-connected components, numbered across all images) and each region's size."""
    ids = np.zeros(masks.shape, dtype=np.uint32)
    sizes, offset = [0], 0
    for i in range(len(masks)):
        if masks[i].any():
            labels, n = ndimage.label(masks[i], structure=np.ones((3, 3), bool))
            ids[i] = np.where(labels > 0, labels + offset, 0)
            sizes.extend(np.bincount(labels.ravel())[1:].tolist())
            offset += n
    return ids, np.asarray(sizes, dtype=np.float64)


def _aupro_from(sorted_: _Sorted, sizes: np.ndarray, n_neg: int, fpr_limit: float) -> float:
    n_regions = len(sizes) - 1
    table = np.zeros(len(sizes))
    table[1:] = 1.0 / (n_regions * sizes[1:])
    pro = np.r_[0.0, sorted_.cumulative(table)]
    fpr = np.r_[0.0, sorted_.positives_negatives()[1] / n_neg]
    return _area_to(fpr, pro, fpr_limit) / fpr_limit


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by it (MVTec AD reference protocol).

    Regions are the 8-connected components of each ground-truth mask. At each threshold, PRO is the mean over
    all regions of the share of the region's pixels above it, and FPR the share of all defect-free pixels above
    it; the curve is interpolated at fpr_limit and integrated with the trapezoid rule.
    """
    maps, masks = _check(maps, masks)
    ids, sizes = _regions(masks)
    n_neg = int((~masks).sum())
    if len(sizes) == 1 or n_neg == 0:
        return float("nan")
    return _aupro_from(_Sorted(maps, ids), sizes, n_neg, fpr_limit)


def _area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the (x, y) curve from 0 to limit, interpolating y at the limit."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < len(x):
        j = int(np.argmax(~keep))  # first point past the limit
        t = (limit - x[j - 1]) / (x[j] - x[j - 1])
        xs, ys = np.r_[xs, limit], np.r_[ys, y[j - 1] + t * (y[j] - y[j - 1])]
    return float(np.trapezoid(ys, xs))


def evaluate(scores, labels, maps=None, masks=None, pixel: bool = True) -> Dict[str, Optional[float]]:
    """Image metrics, plus pixel AUROC/AP/F1-max and AUPRO from a single sort when masks are given."""
    bad = int((~np.isfinite(np.asarray(scores, dtype=np.float64))).sum())
    if bad:
        raise UserError(f"{bad} of {len(scores)} image scores are NaN or infinite: the model's outputs are not finite "
                        f"(diverged training or a damaged checkpoint); metrics cannot be computed")
    image = curve_metrics(scores, labels)
    out = {"image_auroc": image["auroc"], "image_ap": image["ap"], "image_f1_max": image["f1_max"]}
    if not (pixel and maps is not None and masks is not None):
        return out
    maps, masks = _check(maps, masks)
    n_pos, n_neg = int(masks.sum()), int((~masks).sum())
    if n_pos == 0 or n_neg == 0:
        return {**out, "pixel_auroc": float("nan"), "pixel_ap": float("nan"), "pixel_f1_max": float("nan"),
                "aupro": float("nan")}
    ids, sizes = _regions(masks)
    sorted_ = _Sorted(maps, ids)
    px = _curve_metrics(*sorted_.positives_negatives(), n_pos, n_neg)
    out.update({"pixel_auroc": px["auroc"], "pixel_ap": px["ap"], "pixel_f1_max": px["f1_max"],
                "aupro": _aupro_from(sorted_, sizes, n_neg, 0.3)})
    return out
