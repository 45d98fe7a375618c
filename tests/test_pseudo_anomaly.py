import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from datasets import augment
from datasets.pseudo_anomaly import PseudoAnomalyGenerator, patch_labels
from datasets import registry


@pytest.fixture
def object_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    fg = np.zeros((112, 112), bool)
    fg[30:85, 25:95] = True
    return image, fg


def test_masks_inside_dilated_foreground_and_labels_match(object_image):
    image, fg = object_image
    gen = PseudoAnomalyGenerator(min_size=14)
    dilated = binary_dilation(fg, np.ones((3, 3), bool), iterations=10)
    for seed in range(40):
        out, mask = gen(image, fg, np.random.default_rng(seed))
        assert mask.any() and not (mask & ~dilated).any()
        assert out.shape == image.shape and out.dtype == np.uint8
        assert (out[~mask] == image[~mask]).all()  # only masked pixels change
        labels = patch_labels(mask, 14).reshape(8, 8)
        for r in range(8):
            for c in range(8):
                assert labels[r, c] == mask[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14].any()


def test_patch_size_lower_bound_respected(object_image):
    image, fg = object_image
    gen = PseudoAnomalyGenerator(min_size=20)
    for seed in range(10):
        x1, y1, x2, y2, w, h = gen._sample_boxes(binary_dilation(fg, iterations=10), np.random.default_rng(seed))
        assert w >= 20 and h >= 20 and x2 + w <= 112 and y2 + h <= 112


def test_same_seed_same_anomaly(object_image):
    image, fg = object_image
    gen = PseudoAnomalyGenerator(min_size=14)
    a = gen(image, fg, np.random.default_rng([0, 3, 7]))
    b = gen(image, fg, np.random.default_rng([0, 3, 7]))
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_whole_image_when_no_foreground():
    image = np.full((64, 64, 3), 128, np.uint8)
    out, mask = PseudoAnomalyGenerator(min_size=9)(image, None, np.random.default_rng(1))
    assert mask.sum() >= 1


@pytest.mark.parametrize("level", ["light", "medium", "heavy"])
def test_every_op_keeps_shape_and_dtype(level):
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    for op in [augment.color_jitter] + augment.LEVEL_OPS[level]:
        out = op(patch, rng, level)
        assert out.shape == patch.shape and out.dtype == np.uint8, op.__name__


def test_distort_applies_at_most_k_ops_plus_jitter():
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    levels = set()
    for _ in range(60):
        _, (level, *ops) = augment.distort(patch, rng)
        levels.add(level)
        assert ops.count("color_jitter") == 1
        assert len(ops) - 1 <= augment.LEVEL_MAX_OPS[level]
        assert len(set(ops)) == len(ops)
    assert levels == {"light", "medium", "heavy"}


def test_perlin_noise_range_and_structure():
    noise = augment.perlin_noise((64, 48), 16, np.random.default_rng(0))
    assert noise.shape == (64, 48) and noise.min() == 0 and noise.max() == 1
    # smooth at the first octave's scale: neighbouring pixels differ much less than pixels differ from the mean
    # (for white noise the first is larger than the second)
    assert np.abs(np.diff(noise, axis=0)).mean() < 0.5 * np.abs(noise - noise.mean()).mean()
    white = np.random.default_rng(0).random((64, 48))
    assert np.abs(np.diff(white, axis=0)).mean() > np.abs(white - white.mean()).mean()


def test_every_dataset_class_has_a_lower_bound():
    assert registry.min_patch_size("mvtec", "screw") == 9
    assert registry.min_patch_size("mvtec", "bottle") == 14
    assert registry.min_patch_size("visa", "capsules") == 6
    assert registry.min_patch_size("visa", "cashew") == 10
    assert registry.min_patch_size("visa", "pcb1") == 14
    assert registry.min_patch_size("mpdd", "metal_plate") == 14
    assert registry.min_patch_size("mpdd", "tubes") == 6
    assert [registry.min_patch_size("btad", c) for c in ("01", "02", "03")] == [9, 14, 9]
    assert registry.min_patch_size("headct", "headct") == 9
    assert registry.min_patch_size("brats2021", "brats2021") == 14
    assert all(registry.min_patch_size("wfdd", c) == 9 for c in registry.WFDD)
    assert all(registry.min_patch_size("dtd", c) == 14 for c in registry.DTD)
    assert registry.uses_whole_image("mvtec", "transistor") and not registry.uses_whole_image("mvtec", "bottle")
