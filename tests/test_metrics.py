import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from utils.metrics import aupro, auroc, curve_metrics, evaluate


@pytest.mark.parametrize("seed", range(6))
def test_curve_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 5000))
    scores = rng.integers(0, 7, n).astype(np.float32) if seed % 2 else rng.normal(size=n) * 40  # ties / raw logits
    labels = rng.random(n) < 0.3
    m = curve_metrics(scores, labels)
    p, r, _ = precision_recall_curve(labels, scores)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert m["f1_max"] == pytest.approx((2 * p * r / np.maximum(p + r, 1e-12)).max(), abs=1e-9)


def test_auroc_hand_values_and_degenerate():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1], [0, 1, 1]) == pytest.approx(0.5)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan, 1.0], [0, 1])


def reference_aupro(maps, masks, fpr_limit=0.3):
    """Straightforward version: every distinct threshold, per-region overlaps in a Python loop."""
    regions = []  # (image index, region pixels of that image): labelled image by image
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    background = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append(above[background].mean())
        pros.append(np.mean([above[i][region].mean() for i, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < fpr_limit and (~keep).any():
        j = np.argmax(~keep)
        y.append(pros[j - 1] + (fpr_limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1]) * (pros[j] - pros[j - 1]))
        x.append(fpr_limit)
    return np.trapezoid(y, x) / fpr_limit


def test_aupro_single_region_hand_computed():
    # 1 image 1x4: region = pixels 0,1; background 2,3
    masks = np.array([[[1, 1, 0, 0]]], bool)
    maps = np.array([[[0.9, 0.5, 0.7, 0.1]]])
    # thresholds: 0.9 -> pro .5 fpr 0; 0.7 -> pro .5 fpr .5; integration to 0.3: area = .5 * .3 (pro flat at .5)
    assert aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_two_regions_of_different_sizes_count_equally():
    masks = np.zeros((1, 1, 10), bool)
    masks[0, 0, :1] = True      # a 1-pixel region
    masks[0, 0, 2:6] = True     # a 4-pixel region
    maps = np.zeros((1, 1, 10))
    maps[0, 0, 0] = 1.0         # the small region is found, the big one is not
    maps[0, 0, 6:] = 0.5        # background above 0 everywhere except pixel 1
    # at t=1: pro = (1 + 0)/2 = .5, fpr 0; next threshold 0.5 has fpr 4/5 > .3: interpolate -> pro .5 flat
    assert aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_ties_switch_together():
    masks = np.array([[[1, 0, 0, 0]]], bool)
    maps = np.array([[[0.5, 0.5, 0.2, 0.1]]])
    # at t=.5 pro 1 and fpr 1/3 at once: the curve goes (0,0)->(1/3,1), interpolated at .3 -> .9; area .5*.3*.9
    assert aupro(maps, masks) == pytest.approx(0.5 * 0.9)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_reference(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 8:11, 8:10] = True
    masks[1, 0:3, 9:12] = True
    maps = rng.random((4, 12, 12)).round(2) + masks * rng.random() * 0.5
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_reference_when_regions_of_different_images_overlap(seed):
    """Regions at the same pixel positions in different images are different regions."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 4:8, 4:8] = True      # overlaps image 0's region
    masks[2, 2:6, 2:6] = True      # same place as image 0's
    masks[2, 9:11, 9:11] = True
    maps = rng.random((3, 12, 12)).round(2) + masks * rng.random((3, 1, 1)) * 0.6
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-9)


def test_evaluate_reports_every_metric():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:5, 2:5] = True
    out = evaluate(rng.random(4), [0, 0, 1, 1], rng.random((4, 8, 8)), masks)
    assert set(out) == {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}
    assert set(evaluate(rng.random(4), [0, 0, 1, 1], pixel=False)) == {"image_auroc", "image_ap", "image_f1_max"}
