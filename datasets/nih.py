"""NIH ChestX-ray14 as released: Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt and
images/ or images_0NN/images/.

Official split (the paper's protocol, default): train = the "No Finding" images of train_val_list.txt; test = the
"No Finding" images of test_list.txt plus every image with boxes (boxes in the 1024 px frame, several per image
possible, become pixel masks). The official lists keep each patient on one side. `random` instead splits the
"No Finding" patients (not images) 80/20 by the seed. Patient sex is each sample's group (per-sex metrics).

A damaged download fails loudly: a row with binary bytes, missing fields or a box that is not four finite numbers
(blank, "nan", text) stops the run naming the file and line, and so does a listed image missing on disk; with
`skip_corrupt` (--on_corrupt skip) they are skipped and counted in the log instead, never silently.
"""
import csv
import logging
import math
import os
import random
from typing import Dict, Iterator, List, Tuple

from utils.errors import UserError

log = logging.getLogger("patchguard")
NO_FINDING = "No Finding"


class _Problems:
    """Damaged rows and missing files: an error at the first (stop), or counted (skip)."""

    def __init__(self, skip: bool):
        self.skip, self.counts = skip, {}

    def __call__(self, what: str, where: str) -> None:
        if not self.skip:
            raise UserError(f"NIH layout: {where}: {what} (fix the download, or skip such rows with --on_corrupt skip)")
        self.counts[what] = self.counts.get(what, 0) + 1

    def report(self) -> None:
        for what, n in sorted(self.counts.items()):
            log.warning("NIH layout: skipped %d rows or images (%s)", n, what)


def _rows(path: str, problems: _Problems) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of a CSV file after its header; lines with binary bytes are problems."""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    for number, raw in enumerate(lines[1:], start=2):
        try:
            text = raw.decode("utf-8")
            if "\x00" in text:
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            problems("binary bytes in a CSV row", f"{path}, line {number}")
            continue
        if text.strip():
            yield number, next(csv.reader([text]))


def _box(fields: List[str]) -> Tuple[float, float, float, float]:
    values = tuple(float(v) for v in fields)  # ValueError for blank or text
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
        raise ValueError
    return values


def _list(root: str, name: str) -> List[str]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise UserError(f"NIH layout: {path} not found: the official split needs the released train_val_list.txt "
                        f"and test_list.txt (or pass --nih_split random)")
    with open(path, "rb") as f:
        return [line.decode("utf-8", "replace").strip() for line in f.read().splitlines() if line.strip()]


def nih_layout(root: str, split: str, seed: int = 0, nih_split: str = "official", skip_corrupt: bool = False,
               test_fraction: float = 0.2):
    from datasets.samples import Sample, check_test
    entries, boxes_csv = os.path.join(root, "Data_Entry_2017.csv"), os.path.join(root, "BBox_List_2017.csv")
    if not os.path.isfile(entries):
        raise UserError(f"NIH layout: {entries} not found (expected the released Data_Entry_2017.csv)")
    problems = _Problems(skip_corrupt)
    folders = [os.path.join(root, "images")] + sorted(
        os.path.join(root, d, "images") for d in os.listdir(root) if d.startswith("images_"))
    located = {f: os.path.join(d, f) for d in folders if os.path.isdir(d) for f in os.listdir(d)}
    findings: Dict[str, str] = {}
    sex: Dict[str, str] = {}
    patient: Dict[str, str] = {}
    for number, row in _rows(entries, problems):
        if len(row) < 6 or not row[0] or not row[3].strip().isdigit():
            problems("row without image name, findings and patient ID", f"{entries}, line {number}")
            continue
        findings[row[0]], patient[row[0]], sex[row[0]] = row[1], row[3].strip(), row[5]
    boxes: Dict[str, list] = {}
    if os.path.isfile(boxes_csv):
        for number, row in _rows(boxes_csv, problems):
            try:
                boxes.setdefault(row[0], []).append(_box(row[2:6]))
            except (ValueError, IndexError):
                problems("box that is not four finite numbers x, y, w > 0, h > 0", f"{boxes_csv}, line {number}")
    normals = sorted(n for n, f in findings.items() if f == NO_FINDING)
    if nih_split == "official":
        train_list, test_list = set(_list(root, "train_val_list.txt")), set(_list(root, "test_list.txt"))
        train = [n for n in normals if n in train_list]
        test_normal = [n for n in normals if n in test_list]
    else:
        patients = sorted({patient[n] for n in normals})
        random.Random(seed).shuffle(patients)
        held_out = set(patients[:max(1, int(round(len(patients) * test_fraction)))])
        train = [n for n in normals if patient[n] not in held_out]
        test_normal = [n for n in normals if patient[n] in held_out]
    wanted = train if split == "train" else test_normal + sorted(boxes)
    for name in wanted:
        if name not in located:
            problems("listed image missing on disk", f"{name} (looked in {', '.join(folders)})")
    problems.report()
    if split == "train":
        samples = [Sample(located[n], 0, group=sex.get(n)) for n in train if n in located]
        if not samples:
            raise UserError(f"NIH layout: no '{NO_FINDING}' training images of {entries} under {', '.join(folders)}")
        log.info("NIH %s split: %d training images (No Finding)", nih_split, len(samples))
        return samples
    samples = [Sample(located[n], 0, group=sex.get(n)) for n in test_normal if n in located]
    samples += [Sample(located[n], 1, boxes=tuple(b), box_frame=1024, group=sex.get(n),
                       defect=findings.get(n, "finding").split("|")[0]) for n, b in sorted(boxes.items())
                if n in located]
    log.info("NIH %s split: %d test images (%d No Finding, %d with boxes)", nih_split, len(samples),
             sum(s.label == 0 for s in samples), sum(s.label for s in samples))
    return check_test(samples, root, [], boxes_csv)
