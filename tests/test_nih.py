"""The NIH ChestX-ray14 layout: the paper's split from the official lists, patients on one side only, boxes as
masks, and a damaged download that fails loudly (or is skipped and counted)."""
import os

import numpy as np
import pytest
from PIL import Image

import main as cli
from datasets.samples import make_samples
from tests.conftest import SHARED
from utils.errors import UserError

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
BOXES = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
         "00010000_001.png,Mass,0,0,512,256,,,\n"
         "00010000_001.png,Nodule,768,768,256,256,,,\n"
         "00010001_001.png,Atelectasis,256,512,512,128,,,\n")


def write_nih(root, patients=6):
    """Patient p has p % 3 + 1 "No Finding" images (patient 0 one, patient 2 three, ...); the official lists put
    patients 0-3 in train_val and the rest, with the two boxed images, in test."""
    images = root / "images_001" / "images"
    images.mkdir(parents=True)
    rows, train, test = [HEADER], [], []
    for p in range(patients):
        for k in range(p % 3 + 1):
            name = f"{p:08d}_{k:03d}.png"
            Image.fromarray(np.full((128, 128), 60 + p, np.uint8)).save(images / name)
            rows.append(f"{name},No Finding,{k},{p},50,{'MF'[p % 2]},PA,2500,2048,0.168,0.168")
            (train if p < 4 else test).append(name)
    for i, labels in enumerate(["Mass|Nodule", "Atelectasis"]):
        name = f"0001{i:04d}_001.png"
        Image.fromarray(np.full((128, 128), 200, np.uint8)).save(images / name)
        rows.append(f"{name},{labels},1,{100 + i},60,F,AP,2500,2048,0.168,0.168")
        test.append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "BBox_List_2017.csv").write_text(BOXES)
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return train, test


def patient(sample) -> str:
    return os.path.basename(sample.image).split("_")[0]


def test_official_split_follows_the_lists_and_boxes_become_masks(tmp_path):
    from datasets.dataset import AnomalyDataset
    train_list, test_list = write_nih(tmp_path)
    train = make_samples("nih", str(tmp_path), "nih", "train")
    test = make_samples("nih", str(tmp_path), "nih", "test")
    assert sorted(os.path.basename(s.image) for s in train) == sorted(train_list)
    assert sorted(os.path.basename(s.image) for s in test) == sorted(test_list)
    assert sum(s.label for s in test) == 2 and not {patient(s) for s in train} & {patient(s) for s in test}
    first = next(s for s in test if s.label and s.defect == "Mass")
    assert len(first.boxes) == 2 and first.group == "F"
    mask = AnomalyDataset([first], 64, 8).masks[0]
    # the 1024 px frame on a 128 px image drawn at 64 px: rows 0..15 of columns 0..31, and the 48..63 corner
    expected = np.zeros((64, 64), bool)
    expected[0:16, 0:32] = True
    expected[48:64, 48:64] = True
    assert (mask == expected).all()


def test_random_split_keeps_every_patient_on_one_side(tmp_path):
    write_nih(tmp_path, patients=9)
    splits = []
    for seed in range(6):
        train = make_samples("nih", str(tmp_path), "nih", "train", seed=seed, nih_split="random")
        test = [s for s in make_samples("nih", str(tmp_path), "nih", "test", seed=seed, nih_split="random")
                if not s.label]
        assert not {patient(s) for s in train} & {patient(s) for s in test}
        assert len(train) + len(test) == 18  # 9 patients, 1 + 2 + 3 images each
        splits.append(sorted(patient(s) for s in test))
    assert len({tuple(s) for s in splits}) > 1  # the seed moves patients, not images


def test_missing_lists_stop_the_official_split_only(tmp_path, capsys):
    write_nih(tmp_path)
    os.remove(tmp_path / "test_list.txt")
    with pytest.raises(UserError, match="test_list.txt not found.*--nih_split random"):
        make_samples("nih", str(tmp_path), "nih", "test")
    assert make_samples("nih", str(tmp_path), "nih", "test", nih_split="random")


@pytest.mark.parametrize("damage,what", [
    (lambda r: (r / "BBox_List_2017.csv").write_text(BOXES + "00010001_001.png,Mass,,1,2,3,,,\n"), "line 5"),
    (lambda r: (r / "BBox_List_2017.csv").write_text(BOXES + "00010001_001.png,Mass,nan,1,2,3,,,\n"), "line 5"),
    (lambda r: (r / "BBox_List_2017.csv").write_text(BOXES + "00010001_001.png,Mass,ten,1,2,3,,,\n"), "line 5"),
    (lambda r: (r / "Data_Entry_2017.csv").write_bytes((r / "Data_Entry_2017.csv").read_bytes() + b"\x00\xff\xfe\n"),
     "Data_Entry_2017.csv, line 16"),
    (lambda r: os.remove(r / "images_001" / "images" / "00000005_002.png"), "00000005_002.png"),
])
def test_a_damaged_download_stops_naming_the_row_or_is_skipped_and_counted(tmp_path, damage, what, caplog):
    write_nih(tmp_path)
    damage(tmp_path)
    with pytest.raises(UserError, match=f"{what}.*--on_corrupt skip"):
        make_samples("nih", str(tmp_path), "nih", "test")
    test = make_samples("nih", str(tmp_path), "nih", "test", skip_corrupt=True)
    assert "NIH layout: skipped 1 rows or images" in caplog.text
    assert sum(s.label for s in test) == 2 and 4 <= sum(1 - s.label for s in test) <= 5


def test_cli_one_line_error_for_a_damaged_box(tmp_path, capsys):
    from tests.test_cli import one_line_error
    write_nih(tmp_path)
    (tmp_path / "BBox_List_2017.csv").write_text(BOXES + "00010001_001.png,Mass,nan,1,2,3,,,\n")
    one_line_error(capsys, cli.main(["--mode", "train", "--dataset", "nih", "--class_name", "nih", "--dataset_dir",
                                     str(tmp_path), "--output_dir", str(tmp_path / "o"), "--device", "cpu"]),
                   "BBox_List_2017.csv, line 5")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "nih_sample")), reason="NIH sample not present")
def test_released_nih_sample_gives_the_official_split():
    root = os.path.join(SHARED, "data", "nih_sample")
    train = make_samples("nih", root, "nih", "train")
    test = make_samples("nih", root, "nih", "test")
    assert len(train) == 10 and sum(1 - s.label for s in test) == 4 and sum(s.label for s in test) == 16
    assert all(s.group in ("M", "F") for s in train + test) and max(len(s.boxes) for s in test) >= 2
    assert not {patient(s) for s in train} & {patient(s) for s in test}
