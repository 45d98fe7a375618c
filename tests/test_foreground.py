import os

import numpy as np
import pytest

from datasets.foreground import coverage, estimate_foreground, foreground_for
from datasets.images import load_image, load_mask
from datasets.samples import make_samples
from tests.conftest import MPDD


@pytest.mark.skipif(not os.path.isdir(MPDD), reason="shared data not present")
def test_estimated_foreground_covers_mpdd_defects():
    anomalous = [s for s in make_samples("mpdd", MPDD, "metal_plate", "test") if s.label]
    covs, areas = [], []
    for s in anomalous:
        fg = estimate_foreground(load_image(s.image, 256))
        covs.append(coverage(fg, load_mask(s.mask, 256)))
        areas.append(fg.mean())
    print(f"defect coverage min {min(covs):.4f} mean {np.mean(covs):.4f}; foreground area mean {np.mean(areas):.3f}")
    assert min(covs) >= 0.95
    assert np.mean(areas) <= 0.80


def test_plain_object_on_backdrop_and_texture_fallback():
    yy, xx = np.mgrid[:200, :200]
    backdrop = np.stack([180 + 0.2 * xx, 180 + 0.1 * yy, 175 + 0 * xx], -1)  # shaded grey
    image = backdrop.copy()
    obj = (yy - 110) ** 2 + (xx - 90) ** 2 < 50 ** 2
    image[obj] = (30, 60, 160)
    fg = estimate_foreground(image.clip(0, 255).astype(np.uint8))
    assert coverage(fg, obj) == 1.0
    assert fg.mean() < 0.4  # the backdrop is mostly outside
    texture = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    assert estimate_foreground(texture).all()  # no object separates: whole image


def test_cache_is_outside_the_dataset_and_reused(tmp_path, demo_root, monkeypatch):
    monkeypatch.setenv("PATCHGUARD_CACHE", str(tmp_path / "cache"))
    image = make_samples("demo", demo_root, "widget", "train")[0].image
    before = set(os.listdir(os.path.dirname(image)))
    path = foreground_for(image)
    assert path.startswith(str(tmp_path / "cache")) and os.path.isfile(path)
    mtime = os.path.getmtime(path)
    assert foreground_for(image) == path and os.path.getmtime(path) == mtime
    assert set(os.listdir(os.path.dirname(image))) == before
