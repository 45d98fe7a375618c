import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.dataset import AnomalyDataset
from datasets.demo import COUNTS
from datasets.images import load_image, load_mask
from datasets.pseudo_anomaly import PseudoAnomalyGenerator
from datasets.samples import make_samples
from tests.conftest import HEADCT, MPDD
from utils.errors import UserError

real = pytest.mark.skipif(not os.path.isdir(MPDD), reason="shared data not present")


@real
def test_mpdd_metal_plate_counts():
    train = make_samples("mpdd", MPDD, "metal_plate", "train")
    test = make_samples("mpdd", MPDD, "metal_plate", "test")
    assert len(train) == 54 and all(s.label == 0 for s in train)
    assert sum(s.label == 0 for s in test) == 26 and sum(s.label for s in test) == 71
    assert all(s.mask and os.path.basename(s.mask).startswith(os.path.splitext(os.path.basename(s.image))[0])
               for s in test if s.label)


@real
def test_headct_counts_without_masks():
    test = make_samples("headct", HEADCT, "headct", "test")
    assert len(make_samples("headct", HEADCT, "headct", "train")) == 70
    assert sum(s.label == 0 for s in test) == 30 and sum(s.label for s in test) == 100
    assert all(s.mask is None for s in test)
    ds = AnomalyDataset(test[:3] + test[-3:], 32, 8)
    assert not ds.has_masks and ds[0]["image"].shape == (3, 32, 32)


def test_demo_layout(demo_root):
    train = make_samples("demo", demo_root, "widget", "train")
    test = make_samples("demo", demo_root, "widget", "test")
    assert len(train) == COUNTS["train/good"] and all(s.foreground for s in train)
    assert sum(s.label for s in test) == 24 and all(s.mask for s in test if s.label)


def test_training_items_carry_pseudo_anomalies(demo_root):
    train = make_samples("demo", demo_root, "widget", "train")[:4]
    ds = AnomalyDataset(train, 64, 8, PseudoAnomalyGenerator(6), seed=0)
    item = ds[1]
    assert item["pseudo"].shape == (3, 64, 64) and item["patch_labels"].shape == (64,)
    assert item["patch_labels"].sum() >= 1
    pooled = torch.nn.functional.max_pool2d(item["pseudo_mask"][None, None], 8).flatten()
    torch.testing.assert_close(pooled, item["patch_labels"])
    fg = load_mask(train[1].foreground, 64)
    from scipy.ndimage import binary_dilation
    assert not (item["pseudo_mask"].numpy().astype(bool) & ~binary_dilation(fg, np.ones((3, 3)), 10)).any()
    again = ds[1]
    assert torch.equal(again["pseudo"], item["pseudo"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["pseudo"], item["pseudo"])


def test_missing_mask_is_named(demo_root, tmp_path):
    root = tmp_path / "widget"
    shutil.copytree(os.path.join(demo_root, "widget"), root)
    os.remove(root / "ground_truth" / "stain" / "003_mask.png")
    with pytest.raises(UserError, match=r"1 anomalous images have no mask.*stain/003.png"):
        make_samples("demo", str(tmp_path), "widget", "test")


def test_unknown_class_lists_valid_ones(demo_root):
    with pytest.raises(UserError, match="class 'gadget' not found.*classes of demo: widget"):
        make_samples("demo", demo_root, "gadget", "train")
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        make_samples("imagenet", demo_root, "widget", "train")
    with pytest.raises(UserError, match="class 'bottle' not found"):
        make_samples("mvtec", demo_root, "bottle", "train")


def test_image_modes_are_converted(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((20, 30), 90, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(tmp_path / "deep.png")
    assert load_image(str(tmp_path / "rgba.png"), 16)[..., 0].mean() == pytest.approx(200, abs=1)
    assert load_image(str(tmp_path / "gray.png"), 16).shape == (16, 16, 3)
    deep = load_image(str(tmp_path / "deep.png"), 16)
    assert deep.max() > 200 and deep.min() < 20  # rescaled, not clipped to white


def test_bad_files_give_user_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_image(str(tmp_path / "broken.png"), 16)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    with pytest.raises(UserError, match=r"is 10x10 but its image is 30x20"):
        load_mask(str(tmp_path / "small_mask.png"), 16, expected_size=(30, 20))
