"""Sample lists per dataset layout. Every dataset reduces to a list of `Sample`s read by one Dataset class."""
import os
from dataclasses import dataclass
from typing import List, Optional

from datasets import registry
from utils.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NORMAL_DIRS = ("good", "ok")


@dataclass(frozen=True)
class Sample:
    image: str
    label: int                       # 0 normal, 1 anomalous
    mask: Optional[str] = None       # pixel ground truth (anomalous test images)
    foreground: Optional[str] = None  # foreground mask (train images)
    defect: str = "good"


def list_images(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _find_by_stem(folder: str, stem: str, suffixes=("_mask", "")) -> Optional[str]:
    for suffix in suffixes:
        for ext in IMAGE_EXTS:
            for e in (ext, ext.upper()):
                p = os.path.join(folder, stem + suffix + e)
                if os.path.isfile(p):
                    return p
    return None


def class_root(dataset_dir: str, dataset: str, class_name: str) -> str:
    """<dataset_dir>/<class_name>, or <dataset_dir> itself when it already is the class folder."""
    if not os.path.isdir(dataset_dir):
        raise UserError(f"dataset folder not found: {dataset_dir} (expected the folder holding the "
                        f"'{class_name}' class of {dataset})")
    candidate = os.path.join(dataset_dir, class_name)
    if os.path.isdir(candidate):
        return candidate
    if os.path.isdir(os.path.join(dataset_dir, "train")):
        return dataset_dir
    known = registry.classes(dataset) or sorted(d for d in os.listdir(dataset_dir)
                                                if os.path.isdir(os.path.join(dataset_dir, d)))
    raise UserError(f"class '{class_name}' not found in {dataset_dir}; expected {candidate}/train/good "
                    f"(classes of {dataset}: {', '.join(known)})")


def make_mvtec_samples(root: str, split: str, foreground_dir: Optional[str] = None) -> List[Sample]:
    """MVTec AD layout: train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png.

    Used for mvtec, mpdd, headct and demo. Foreground masks: <foreground_dir or root/train/foreground_mask>/<stem>.png.
    """
    if split == "train":
        folder = os.path.join(root, "train", "good")
        images = list_images(folder)
        if not images:
            raise UserError(f"no training images in {folder} (expected normal images: png, jpg, bmp, tif)")
        fg_dir = foreground_dir or os.path.join(root, "train", "foreground_mask")
        fg_dir = fg_dir if os.path.isdir(fg_dir) else None
        return [Sample(p, 0, foreground=_find_by_stem(fg_dir, _stem(p)) if fg_dir else None) for p in images]

    test_dir = os.path.join(root, "test")
    defects = sorted(d for d in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, d))) \
        if os.path.isdir(test_dir) else []
    gt_root = os.path.join(root, "ground_truth")
    has_gt = os.path.isdir(gt_root)
    samples, missing = [], []
    for defect in defects:
        label = 0 if defect in NORMAL_DIRS else 1
        for p in list_images(os.path.join(test_dir, defect)):
            mask = None
            if label and has_gt:
                mask = _find_by_stem(os.path.join(gt_root, defect), _stem(p))
                if mask is None:
                    missing.append(os.path.relpath(p, root))
            samples.append(Sample(p, label, mask=mask, defect=defect))
    if not samples:
        raise UserError(f"no test images in {test_dir} (expected test/good and test/<defect> folders)")
    if not any(s.label == 0 for s in samples) or not any(s.label for s in samples):
        raise UserError(f"{test_dir} needs both normal (test/good) and anomalous (test/<defect>) images")
    if missing:
        raise UserError(f"{len(missing)} anomalous images have no mask in {gt_root} "
                        f"(expected <defect>/<stem>_mask.png): {', '.join(missing[:5])}")
    return samples


def make_samples(dataset: str, dataset_dir: str, class_name: str, split: str,
                 foreground_dir: Optional[str] = None) -> List[Sample]:
    """The sample list of one class and split ('train' or 'test')."""
    if dataset not in registry.DATASETS:
        raise UserError(f"unknown dataset '{dataset}': expected one of {', '.join(registry.DATASETS)}")
    known = registry.classes(dataset)
    if known and class_name not in known:
        raise UserError(f"unknown class '{class_name}' for {dataset}: expected one of {', '.join(known)}")
    root = class_root(dataset_dir, dataset, class_name)
    return make_mvtec_samples(root, split, foreground_dir)
