"""Sample lists per dataset layout. Every dataset reduces to a list of `Sample`s read by one Dataset class.

Layouts (as distributed):
  mvtec, mpdd, wfdd, dtd, headct, demo: <class>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}
  btad: <class>/{train/ok, test/{ok,ko}, ground_truth/ko/<stem>.png|.bmp}
  brats2021: <root>/{train/normal, test/<type>, ground_truth/<name with flair -> seg>}
  visa: <class>/Data/{Images/{Normal,Anomaly}, Masks/Anomaly/<stem>.png} + <root>/split_csv/1cls.csv
  folder: --normal_dir, --abnormal_dir (one or more), [--mask_dir (one or more)], [--normal_test_dir]
  nih: <root>/{Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt, images/} (datasets/nih.py)
"""
import csv
import os
import random
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

from datasets import registry
from utils.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NORMAL_DIRS = ("good", "ok", "normal", "Normal")


@dataclass(frozen=True)
class Sample:
    image: str
    label: int                        # 0 normal, 1 anomalous
    mask: Optional[str] = None        # pixel ground truth (anomalous test images)
    foreground: Optional[str] = None  # foreground mask (train images)
    defect: str = "good"
    boxes: Tuple[Tuple[float, float, float, float], ...] = ()  # pixel ground truth as boxes (x, y, w, h)
    box_frame: int = 0                # the boxes' coordinate frame (px; 0 = the image's own size)
    group: Optional[str] = None       # subgroup for per-group metrics (NIH: patient sex)


@dataclass(frozen=True)
class FolderSpec:
    """The user's own folders for --dataset folder."""
    normal_dir: str
    abnormal_dir: Tuple[str, ...]
    mask_dir: Tuple[str, ...] = ()
    normal_test_dir: Optional[str] = None
    test_fraction: float = 0.2
    seed: int = 0


def list_images(folder: str) -> List[str]:
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def find_by_stem(folder: str, stem: str, suffixes: Sequence[str] = ("_mask", "")) -> Optional[str]:
    if not folder or not os.path.isdir(folder):
        return None
    for suffix in suffixes:
        for ext in IMAGE_EXTS:
            for e in (ext, ext.upper()):
                p = os.path.join(folder, stem + suffix + e)
                if os.path.isfile(p):
                    return p
    return None


def _with_foreground(samples: List[Sample], fg_dir: Optional[str]) -> List[Sample]:
    if not fg_dir or not os.path.isdir(fg_dir):
        return samples
    return [replace(s, foreground=find_by_stem(fg_dir, _stem(s.image), ("", "_mask"))) for s in samples]


def check_test(samples: List[Sample], where: str, missing: List[str], mask_root: str) -> List[Sample]:
    if not samples:
        raise UserError(f"no test images in {where}")
    if not any(s.label == 0 for s in samples) or not any(s.label for s in samples):
        raise UserError(f"{where} needs both normal and anomalous test images "
                        f"({sum(s.label == 0 for s in samples)} normal, {sum(s.label for s in samples)} anomalous)")
    if missing:
        raise UserError(f"{len(missing)} anomalous images have no mask in {mask_root} "
                        f"(expected masks named like the image, e.g. <stem>_mask.png): {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    return samples


def mvtec_layout(root: str, split: str, foreground_dir: Optional[str] = None) -> List[Sample]:
    """train/<normal>, test/<normal|defect>, ground_truth/<defect>/<stem>[_mask].<ext> (or flat ground_truth/).

    The normal folder is good, ok or normal. A missing ground_truth folder means image labels only.
    """
    if split == "train":
        folder = next((os.path.join(root, "train", d) for d in NORMAL_DIRS
                       if os.path.isdir(os.path.join(root, "train", d))), os.path.join(root, "train", "good"))
        images = list_images(folder)
        if not images:
            raise UserError(f"no training images in {folder} (expected normal images: png, jpg, bmp or tif)")
        return _with_foreground([Sample(p, 0) for p in images],
                                foreground_dir or os.path.join(root, "train", "foreground_mask"))
    test_dir = os.path.join(root, "test")
    if not os.path.isdir(test_dir):
        raise UserError(f"no test folder {test_dir} (expected test/good and test/<defect>)")
    gt_root = os.path.join(root, "ground_truth")
    has_gt = os.path.isdir(gt_root)
    samples, missing = [], []
    for defect in sorted(d for d in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, d))):
        label = 0 if defect in NORMAL_DIRS else 1
        for p in list_images(os.path.join(test_dir, defect)):
            mask = None
            if label and has_gt:
                stem = _stem(p)
                mask = (find_by_stem(os.path.join(gt_root, defect), stem)
                        or find_by_stem(gt_root, stem) or find_by_stem(gt_root, stem.replace("flair", "seg")))
                if mask is None:
                    missing.append(os.path.relpath(p, root))
            samples.append(Sample(p, label, mask=mask, defect=defect))
    return check_test(samples, test_dir, missing, gt_root)


def visa_layout(root: str, class_name: str, split: str, dataset_dir: str, split_rule: str = "csv",
                foreground_dir: Optional[str] = None) -> List[Sample]:
    """VisA as distributed: split from split_csv/1cls.csv, or (official rule) normals with a foreground mask
    in Data/Images/foreground_mask are for training and the rest for testing."""
    images_dir = os.path.join(root, "Data", "Images")
    masks_dir = os.path.join(root, "Data", "Masks", "Anomaly")
    fg_dir = foreground_dir or os.path.join(images_dir, "foreground_mask")
    normals = list_images(os.path.join(images_dir, "Normal"))
    anomalies = list_images(os.path.join(images_dir, "Anomaly"))
    if not normals:
        raise UserError(f"no images in {os.path.join(images_dir, 'Normal')} (expected VisA's Data/Images/Normal)")
    if split_rule == "foreground":
        if not os.path.isdir(fg_dir):
            raise UserError(f"--visa_split foreground needs foreground masks in {fg_dir}")
        train = [p for p in normals if find_by_stem(fg_dir, _stem(p), ("",))]
        test_normal = [p for p in normals if p not in set(train)]
        test_anomalous = anomalies
    else:
        csv_path = os.path.join(dataset_dir, "split_csv", "1cls.csv")
        if not os.path.isfile(csv_path):
            raise UserError(f"VisA split file not found: {csv_path} (or use --visa_split foreground)")
        train, test_normal, test_anomalous = [], [], []
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("object") != class_name:
                    continue
                path = os.path.join(dataset_dir, row["image"])
                if row["split"] == "train":
                    train.append(path)
                elif row["label"] == "normal":
                    test_normal.append(path)
                else:
                    test_anomalous.append(path)
    if split == "train":
        if not train:
            raise UserError(f"no VisA training images for {class_name} under {root}")
        return _with_foreground([Sample(p, 0) for p in train], fg_dir)
    samples, missing = [Sample(p, 0) for p in test_normal], []
    for p in test_anomalous:
        mask = find_by_stem(masks_dir, _stem(p), ("",))
        if mask is None:
            missing.append(os.path.relpath(p, root))
        samples.append(Sample(p, 1, mask=mask, defect="anomaly"))
    return check_test(samples, images_dir, missing, masks_dir)


def folder_layout(spec: FolderSpec, split: str) -> List[Sample]:
    """The user's own folders: normals (split off a seeded test share unless --normal_test_dir), anomalies, masks."""
    normals = list_images(spec.normal_dir)
    if not normals:
        raise UserError(f"no images in --normal_dir {spec.normal_dir}")
    if spec.normal_test_dir:
        train, test_normal = normals, list_images(spec.normal_test_dir)
        if not test_normal:
            raise UserError(f"no images in --normal_test_dir {spec.normal_test_dir}")
    else:
        shuffled = normals[:]
        random.Random(spec.seed).shuffle(shuffled)
        k = max(1, int(round(len(shuffled) * spec.test_fraction)))
        if len(shuffled) - k < 1:
            raise UserError(f"--normal_dir {spec.normal_dir} has {len(normals)} image(s): too few to split off test "
                            f"normals; add images or give --normal_test_dir")
        test_normal, train = sorted(shuffled[:k]), sorted(shuffled[k:])
    if split == "train":
        return [Sample(p, 0) for p in train]
    samples, missing = [Sample(p, 0) for p in test_normal], []
    paired = len(spec.mask_dir) == len(spec.abnormal_dir)
    for i, folder in enumerate(spec.abnormal_dir):
        abnormal = list_images(folder)
        if not abnormal:
            raise UserError(f"no images in --abnormal_dir {folder}")
        defect = os.path.basename(os.path.normpath(folder)) if len(spec.abnormal_dir) > 1 else "abnormal"
        # masks matched by name: first in the mask folder at the same position, then in any mask folder
        mask_dirs = ([spec.mask_dir[i]] if paired else []) + list(spec.mask_dir)
        for p in abnormal:
            mask = next((m for d in mask_dirs for m in [find_by_stem(d, _stem(p))] if m), None)
            if spec.mask_dir and mask is None:
                missing.append(os.path.relpath(p, os.path.dirname(os.path.normpath(folder))))
            samples.append(Sample(p, 1, mask=mask, defect=defect))
    return check_test(samples, ", ".join(spec.abnormal_dir), missing, ", ".join(spec.mask_dir))


def class_root(dataset_dir: str, dataset: str, class_name: str) -> str:
    """<dataset_dir>/<class_name>, or <dataset_dir> itself when it already is the class folder."""
    if not os.path.isdir(dataset_dir):
        raise UserError(f"dataset folder not found: {dataset_dir} (expected the folder holding the "
                        f"'{class_name}' class of {dataset})")
    candidate = os.path.join(dataset_dir, class_name)
    if os.path.isdir(candidate):
        return candidate
    if os.path.isdir(os.path.join(dataset_dir, "train")) or os.path.isdir(os.path.join(dataset_dir, "Data")):
        return dataset_dir
    expected = "Data/Images/Normal" if dataset == "visa" else "train/good"
    raise UserError(f"class '{class_name}' not found in {dataset_dir}; expected {candidate}/{expected} "
                    f"(classes of {dataset}: {', '.join(registry.classes(dataset)) or 'any folder name'})")


def available_classes(dataset: str, dataset_dir: str) -> List[str]:
    """Classes of `dataset` present under dataset_dir (for --class_name all)."""
    known = registry.classes(dataset)
    if not os.path.isdir(dataset_dir):
        raise UserError(f"dataset folder not found: {dataset_dir}")
    present = [c for c in known if os.path.isdir(os.path.join(dataset_dir, c))]
    if registry.accepts_any_class(dataset):  # the user's own products in the same layout
        layout_dir = os.path.join("Data", "Images") if dataset == "visa" else "train"
        present += sorted(c for c in os.listdir(dataset_dir) if c not in known
                          and os.path.isdir(os.path.join(dataset_dir, c, layout_dir)))
    if len(known) == 1 and not present and os.path.isdir(os.path.join(dataset_dir, "train")):
        present = list(known)
    if not present:
        raise UserError(f"no class folders of {dataset} in {dataset_dir} (expected some of: {', '.join(known)})")
    return present


def make_samples(dataset: str, dataset_dir: str, class_name: str, split: str,
                 foreground_dir: Optional[str] = None, visa_split: str = "csv",
                 folder: Optional[FolderSpec] = None, seed: int = 0, nih_split: str = "official",
                 skip_corrupt: bool = False) -> List[Sample]:
    """The sample list of one class and split ('train' or 'test')."""
    if dataset not in registry.DATASETS:
        raise UserError(f"unknown dataset '{dataset}': expected one of {', '.join(registry.DATASETS)}")
    if dataset == "folder":
        if folder is None:
            raise UserError("--dataset folder needs --normal_dir and --abnormal_dir")
        return folder_layout(folder, split)
    if dataset == "nih":
        from datasets.nih import nih_layout
        return nih_layout(dataset_dir if os.path.isfile(os.path.join(dataset_dir, "Data_Entry_2017.csv"))
                          else class_root(dataset_dir, dataset, class_name), split, seed, nih_split, skip_corrupt)
    known = registry.classes(dataset)
    if known and class_name not in known and not registry.accepts_any_class(dataset):
        raise UserError(f"unknown class '{class_name}' for {dataset}: expected one of {', '.join(known)}")
    root = class_root(dataset_dir, dataset, class_name)
    if dataset == "visa":
        return visa_layout(root, class_name, split, dataset_dir, visa_split, foreground_dir)
    return mvtec_layout(root, split, foreground_dir)

