"""A miniature of every dataset layout goes through make_samples with the right counts, labels and masks."""
import csv
import os
import socket

import numpy as np
import pytest
from PIL import Image

from datasets.samples import FolderSpec, available_classes, make_samples
from utils.errors import UserError


def img(path, size=(12, 10), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.random.default_rng(len(path)).integers(0, 255, shape, dtype=np.uint8)).save(path)


def mvtec_tree(root, cls, normal="good", anomalous=("crack",), mask_suffix="_mask", ext=".png", mask_ext=".png",
               n_train=3, n_good=2, n_bad=2, masks=True):
    base = os.path.join(root, cls)
    for i in range(n_train):
        img(f"{base}/train/{normal}/{i:03d}{ext}")
    for i in range(n_good):
        img(f"{base}/test/{normal}/{i:03d}{ext}")
    for d in anomalous:
        for i in range(n_bad):
            img(f"{base}/test/{d}/{i:03d}{ext}")
            if masks:
                img(f"{base}/ground_truth/{d}/{i:03d}{mask_suffix}{mask_ext}", mode="L")


def counts(samples):
    return len(samples), sum(s.label for s in samples), sum(s.mask is not None for s in samples)


@pytest.mark.parametrize("dataset,cls", [("mvtec", "bottle"), ("mpdd", "tubes"), ("wfdd", "grey_cloth"),
                                         ("dtd", "Woven_001")])
def test_mvtec_style(tmp_path, dataset, cls):
    mvtec_tree(str(tmp_path), cls, anomalous=("crack", "scratch"))
    assert counts(make_samples(dataset, str(tmp_path), cls, "train")) == (3, 0, 0)
    assert counts(make_samples(dataset, str(tmp_path), cls, "test")) == (6, 4, 4)


def test_btad_bmp_images_with_png_masks(tmp_path):
    mvtec_tree(str(tmp_path), "01", normal="ok", anomalous=("ko",), mask_suffix="", ext=".bmp", mask_ext=".png")
    mvtec_tree(str(tmp_path), "03", normal="ok", anomalous=("ko",), mask_suffix="", ext=".bmp", mask_ext=".bmp")
    for cls in ("01", "03"):
        assert counts(make_samples("btad", str(tmp_path), cls, "train")) == (3, 0, 0)
        test = make_samples("btad", str(tmp_path), cls, "test")
        assert counts(test) == (4, 2, 2) and {s.defect for s in test} == {"ok", "ko"}


def test_brats_flat_seg_masks(tmp_path):
    root = tmp_path / "brats"
    for i in range(3):
        img(f"{root}/train/normal/BraTS_{i}_flair.png")
    for i in range(2):
        img(f"{root}/test/normal/BraTS_{i}_flair.png")
        img(f"{root}/test/tumor/BraTS_{i + 5}_flair.png")
        img(f"{root}/ground_truth/BraTS_{i + 5}_seg.png", mode="L")
    assert counts(make_samples("brats2021", str(root), "brats2021", "train")) == (3, 0, 0)
    test = make_samples("brats2021", str(root), "brats2021", "test")
    assert counts(test) == (4, 2, 2)
    assert all("_seg" in s.mask for s in test if s.label)


@pytest.mark.parametrize("masks", [True, False])
def test_headct_with_and_without_masks(tmp_path, masks):
    mvtec_tree(str(tmp_path), "headct", anomalous=("hemorrhage",), masks=masks)
    assert counts(make_samples("headct", str(tmp_path / "headct"), "headct", "test")) == (4, 2, 2 if masks else 0)


def visa_tree(root, cls="candle"):
    base = os.path.join(root, cls, "Data")
    rows = []
    for i in range(5):
        img(f"{base}/Images/Normal/{i:04d}.JPG")
        rows.append([cls, "train" if i < 3 else "test", "normal", f"{cls}/Data/Images/Normal/{i:04d}.JPG", ""])
    for i in range(2):
        img(f"{base}/Images/Anomaly/{i:03d}.JPG")
        img(f"{base}/Masks/Anomaly/{i:03d}.png", mode="L")
        rows.append([cls, "test", "anomaly", f"{cls}/Data/Images/Anomaly/{i:03d}.JPG",
                     f"{cls}/Data/Masks/Anomaly/{i:03d}.png"])
    for i in range(2):  # official rule: normals with a foreground mask are the training set
        img(f"{base}/Images/foreground_mask/{i:04d}.JPG", mode="L")
    os.makedirs(os.path.join(root, "split_csv"), exist_ok=True)
    with open(os.path.join(root, "split_csv", "1cls.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"]] + rows)


def test_visa_csv_split_and_official_foreground_rule(tmp_path):
    visa_tree(str(tmp_path))
    assert counts(make_samples("visa", str(tmp_path), "candle", "train")) == (3, 0, 0)
    assert counts(make_samples("visa", str(tmp_path), "candle", "test")) == (4, 2, 2)
    train = make_samples("visa", str(tmp_path), "candle", "train", visa_split="foreground")
    assert counts(train) == (2, 0, 0) and all(s.foreground for s in train)
    assert counts(make_samples("visa", str(tmp_path), "candle", "test", visa_split="foreground")) == (5, 2, 2)


def test_folder_dataset_with_seeded_split(tmp_path):
    for i in range(10):
        img(f"{tmp_path}/normal/n{i}.jpg")
    for i in range(3):
        img(f"{tmp_path}/bad/b{i}.png")
        img(f"{tmp_path}/masks/b{i}_mask.png", mode="L")
    spec = FolderSpec(str(tmp_path / "normal"), (str(tmp_path / "bad"),), (str(tmp_path / "masks"),))
    train = make_samples("folder", "", "mine", "train", folder=spec)
    test = make_samples("folder", "", "mine", "test", folder=spec)
    assert counts(train) == (8, 0, 0) and counts(test) == (5, 3, 3)
    assert not {s.image for s in train} & {s.image for s in test}
    assert make_samples("folder", "", "mine", "train", folder=spec) == train  # seeded
    no_masks = FolderSpec(str(tmp_path / "normal"), (str(tmp_path / "bad"),), normal_test_dir=str(tmp_path / "normal"))
    assert counts(make_samples("folder", "", "mine", "test", folder=no_masks)) == (13, 3, 0)


def test_available_classes_and_empty_class(tmp_path):
    mvtec_tree(str(tmp_path), "bottle")
    mvtec_tree(str(tmp_path), "screw")
    assert available_classes("mvtec", str(tmp_path)) == ["bottle", "screw"]
    os.makedirs(tmp_path / "cable" / "train" / "good")
    with pytest.raises(UserError, match="no training images in .*cable/train/good"):
        make_samples("mvtec", str(tmp_path), "cable", "train")


def test_downloads_fail_fast_offline_and_leave_no_partial_file(tmp_path, monkeypatch):
    import time
    import download_data
    import download_weight
    from utils import download
    # a local port nothing listens on: connection refused at once, no network needed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mvtec_anomaly_detection.tar.xz"
    t0 = time.time()
    assert download_data.main(["--dataset", "mvtec", "--root", str(tmp_path), "--url", url]) == 2
    assert time.time() - t0 < 5
    leftovers = [f for _, _, fs in os.walk(tmp_path) for f in fs]
    assert not [f for f in leftovers if f.endswith(".tar.xz")]  # never a partial file that looks complete
    monkeypatch.setattr(download, "GDRIVE", f"http://127.0.0.1:{port}")
    t0 = time.time()
    assert download_weight.main(["--dataset", "mvtec", "--class_name", "bottle",
                                 "--checkpoint_dir", str(tmp_path / "w")]) == 2
    assert time.time() - t0 < 5 and not (tmp_path / "w" / "patchguard_mvtec_bottle.pth").exists()
    assert download_data.main(["--dataset", "headct", "--root", str(tmp_path)]) == 2  # manual dataset: says where


def test_truncated_archive_is_refused(tmp_path):
    import tarfile
    from utils.download import extract
    src = tmp_path / "a.txt"
    src.write_bytes(os.urandom(50000))
    with tarfile.open(tmp_path / "x.tar", "w") as t:
        t.add(src, arcname="a.txt")
    data = (tmp_path / "x.tar").read_bytes()
    (tmp_path / "x.tar").write_bytes(data[:20000])
    with pytest.raises(UserError, match="corrupt or truncated"):
        extract(str(tmp_path / "x.tar"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "a.txt").exists()
