"""Our pseudo-anomaly generator against the official one (../shared/fixtures/official_generator).

Exact cases: swirl and rotate-and-paste outputs of the official code. Statistics: the official generator draws from
global RNGs, so samples cannot be matched one by one; instead every statistic the fixture holds is computed the
same way on our generator (same images, sizes, sample counts), and the tolerance of each comparison is derived
from its sampling error: 4 standard errors of the difference of two independent estimates at the same sample
count, the standard error estimated by bootstrapping our own samples (whole samples are resampled, so the
patches of one sample stay together). A 4-sigma band fails by chance about once in 15,000 comparisons.
"""
import json
import os

import numpy as np
import pytest

from datasets import augment
from datasets.images import load_image
from datasets.pseudo_anomaly import PseudoAnomalyGenerator, patch_labels, rotate_and_paste
from tests.conftest import MPDD, SHARED

FIXTURE = os.path.join(SHARED, "fixtures", "official_generator")
pytestmark = pytest.mark.skipif(not (os.path.isdir(FIXTURE) and os.path.isdir(MPDD)),
                                reason="official generator fixture or MPDD data not present")
SIGMAS = 4
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
OFFICIAL_OP_NAMES = {"gaussian_blur": augment.blur, "elastic_transform": augment.elastic,
                     "swirl_distortion": augment.swirl, "jpeg_artifacts": augment.jpeg,
                     "torn_paper_effect": augment.torn_lines, "perlin_noise_mask": augment.perlin_blob,
                     "random_erasing": augment.random_erasing, "color_transformation": augment.color_jitter}


@pytest.fixture(scope="module")
def cases():
    return np.load(os.path.join(FIXTURE, "cases.npz"))


@pytest.fixture(scope="module")
def stats():
    with open(os.path.join(FIXTURE, "stats.json")) as f:
        return json.load(f)


def metal_plate_images(size):
    folder = os.path.join(MPDD, "metal_plate", "train", "good")
    return [load_image(os.path.join(folder, f), size) for f in sorted(os.listdir(folder))]


def test_swirl_reproduces_official_cases(cases):
    for i, strength in enumerate(cases["swirl_strength"]):
        ours = augment.swirl_with_strength(cases[f"swirl_input_{i}"], float(strength))
        diff = np.abs(ours.astype(int) - cases[f"swirl_output_{i}"].astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 4, (i, diff.mean(), diff.max())


def test_rotate_and_paste_reproduces_official_cases(cases):
    for i, angle in enumerate(cases["paste_angles"]):
        x1, y1, x2, y2, w, h = (int(v) for v in cases["paste_boxes"][i])
        image = cases["paste_images"][i]
        out, mask = rotate_and_paste(image, image[y1:y1 + h, x1:x1 + w].copy(), x2, y2, float(angle))
        assert (mask == cases["paste_masks"][i]).all(), i
        diff = np.abs(out.astype(int) - cases["paste_outputs"][i].astype(int))
        assert diff.max() <= 3 and (diff > 0).sum() <= 10, (i, diff.max(), (diff > 0).sum())


def bootstrap_se(values, statistic, rng, rounds=300):
    """Standard error of statistic(values) from resampling whole samples."""
    n = len(values)
    return float(np.std([statistic([values[j] for j in rng.integers(0, n, n)]) for _ in range(rounds)]))


def outside_sampling_error(name, ours, official, se):
    """'' when ours is within SIGMAS standard errors of the difference, else a description."""
    tolerance = SIGMAS * np.sqrt(2) * se  # both estimates have this error at the same sample count
    return "" if abs(ours - official) <= tolerance else \
        f"{name}: ours {ours:.4f}, official {official:.4f}, tolerance {tolerance:.4f}"


@pytest.mark.parametrize("index", [0, 1], ids=["112px", "224px"])
def test_pseudo_anomaly_statistics_match_official(stats, index):
    ref = stats["per_sample"][index]
    size, count = ref["image_size"], ref["samples"]
    images = metal_plate_images(size)
    generator = PseudoAnomalyGenerator(min_size=14)
    samples = []  # per sample: mask area, mean change in mask, share of mask pixels changed <= 8, max change per anomalous patch
    for i in range(count):
        image = images[i % len(images)]
        out, mask = generator(image, None, np.random.default_rng([11, size, i]))
        change = np.abs(out.astype(int) - image.astype(int)).max(-1)  # per pixel, largest over RGB (fixture's definition)
        grid = size // 14
        anomalous = patch_labels(mask, 14).reshape(grid, grid) > 0
        patch_max = change.reshape(grid, 14, grid, 14).max(axis=(1, 3))[anomalous]
        samples.append((mask.sum(), change[mask].mean(), (change[mask] <= 8).mean(), patch_max))

    rng = np.random.default_rng(0)
    checks = {f"mask area q{q}": (lambda s, q=q: np.quantile([x[0] for x in s], q), ref["mask_area_px_quantiles"][str(q)])
              for q in QUANTILES}
    checks.update({f"mean change in mask q{q}": (lambda s, q=q: np.quantile([x[1] for x in s], q),
                                                 ref["mean_abs_change_in_mask_quantiles_0_255"][str(q)])
                   for q in QUANTILES})
    checks["share of mask pixels changed <= 8"] = (lambda s: np.mean([x[2] for x in s]),
                                                   ref["share_of_mask_pixels_changed_le_8_of_255_mean"])
    checks["anomalous patches per sample"] = (lambda s: np.mean([len(x[3]) for x in s]),
                                              ref["anomalous_patches_per_sample"])
    for level in (8, 16, 32):
        checks[f"anomalous patches changed <= {level}"] = (
            lambda s, level=level: np.mean(np.concatenate([x[3] for x in s]) <= level),
            ref[f"share_of_anomalous_patches_max_change_le_{level}_of_255"])
    failures = [outside_sampling_error(name, statistic(samples), official, bootstrap_se(samples, statistic, rng))
                for name, (statistic, official) in checks.items()]
    assert not any(failures), "; ".join(f for f in failures if f)


def test_each_distortion_op_matches_official_strength(stats):
    """Mean |change| (over pixels and channels) of each op at each level, on 150 square crops of 16..56 px of the
    112 px images (the fixture's protocol)."""
    images = metal_plate_images(112)
    rng = np.random.default_rng(5)
    crops = []
    for _ in range(150):
        image, side = images[rng.integers(len(images))], int(rng.integers(16, 56, endpoint=True))
        y, x = rng.integers(0, 112 - side, 2, endpoint=True)
        crops.append(image[y:y + side, x:x + side].copy())
    failures = []
    for name, op in OFFICIAL_OP_NAMES.items():
        for level in ("light", "medium", "heavy"):
            changes = [np.abs(op(c, rng, level).astype(int) - c).mean() for c in crops]
            se = np.std(changes) / np.sqrt(len(changes))
            official = stats["per_op_mean_abs_change_on_16_to_56px_crops"][name][level]["mean"]
            failures.append(outside_sampling_error(f"{name} {level}", float(np.mean(changes)), official, se))
    assert not any(failures), "; ".join(f for f in failures if f)
