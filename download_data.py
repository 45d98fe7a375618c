"""Datasets and the official foreground masks, extracted into the layout the loaders read.

    python download_data.py --dataset mvtec [--root data] [--url MIRROR]

Offline or on a network error this stops within seconds with the URL and where to put the file by hand.
"""
import argparse
import os
import shutil
import sys
import tempfile

from datasets import registry
from utils.download import extract, fetch, gdown_fetch, gdown_folder_files, replace_path
from utils.errors import UserError

# dataset -> (archive URL or None when it needs a registration/manual step, official page,
#             foreground masks on Google Drive: ("folder"|"file", id) or None)
SOURCES = {
    "mvtec": ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
              "mvtec_anomaly_detection.tar.xz", "https://www.mvtec.com/company/research/datasets/mvtec-ad/",
              ("folder", "1VHYcJUDja7o2xbYlh7YKYK_6EleizdoU")),
    "visa": ("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
             "https://github.com/amazon-science/spot-diff", ("folder", "1IdLOXyMpi8dzhyeUV6cLOeW5LK4rIOfC")),
    "mpdd": (None, "https://github.com/stepanje/MPDD", ("folder", "10JHKrilH8lBwqnM5HRfkt_LytankNJ_S")),
    "btad": ("https://avires.dimi.uniud.it/papers/btad/btad.zip", "https://github.com/pankajmishra000/VT-ADL",
             ("folder", "1LGtlVeFbgcC31cQeJnTWX-j2cTpLdsuf")),
    "wfdd": (None, "https://github.com/cqylunlun/GLASS#dataset-release", None),
    "dtd": (None, "https://openaccess.thecvf.com/content/WACV2023/html/Aota_Zero-Shot_Versus_Many-Shot_"
                  "Unsupervised_Texture_Anomaly_Detection_WACV_2023_paper.html", None),
    "brats2021": (None, "http://braintumorsegmentation.org/", ("file", "1viMafEbTR2HvMmWWxsrqd7yE9N3VR7FU")),
    "headct": (None, "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
               ("file", "1XdUgdMYrfAFydROTWRdj5S14UQbnu725")),
}


def download_dataset(dataset: str, target: str, url: str = None, masks: bool = True, replace: bool = False) -> str:
    """Fetch and extract `dataset` so that `target` holds its class folders (the --dataset_dir of main.py).

    Folders and masks already there are kept unless `replace`; nothing is deleted before its replacement is complete.
    """
    if dataset not in SOURCES:
        raise UserError(f"unknown dataset '{dataset}': expected one of {', '.join(SOURCES)}")
    archive_url, page, fg = SOURCES[dataset]
    archive_url = url or archive_url
    if archive_url:
        archive = os.path.join(target, ".downloads", os.path.basename(archive_url.split("?")[0]))
        fetch(archive_url, archive)
        kept = extract(archive, target, replace)
        print(f"extracted {archive} into {target}"
              + (f"; kept what was already there: {', '.join(sorted(kept))} (--replace to overwrite)" if kept else ""))
    elif not os.path.isdir(target):
        raise UserError(f"{dataset} needs a manual download (registration or licence): get it from {page} and "
                        f"extract it into {target}/<class>/ in its distributed layout, then rerun for the masks")
    if masks and fg:
        download_foreground_masks(dataset, target, fg, replace)
    return target


def download_foreground_masks(dataset: str, target: str, fg, replace: bool = False) -> None:
    """Official masks go to <class>/train/foreground_mask (VisA: <class>/Data/Images/foreground_mask).

    Where that folder exists, only missing masks are added, unless `replace` (swapped in once complete).
    """
    kind, drive_id = fg
    staging = os.path.join(target, ".foreground_download")
    if kind == "file":
        archive = gdown_fetch(drive_id, os.path.join(staging, f"{dataset}_foreground.zip"))
        extract(archive, staging, replace=True)
    else:
        for name, file_id in gdown_folder_files(drive_id, staging):
            path = gdown_fetch(file_id, os.path.join(staging, name))
            if path.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz")):
                extract(path, staging, replace=True)
    placed = 0
    for class_name in registry.classes(dataset):
        src = next((os.path.join(dp) for dp, dn, _ in os.walk(staging)
                    if os.path.basename(dp) == class_name), None)
        if not src:
            continue
        fg_src = next((os.path.join(dp) for dp, _, fn in os.walk(src) if fn and "foreground" in dp), src)
        dest = (os.path.join(target, class_name, "Data", "Images", "foreground_mask") if dataset == "visa"
                else os.path.join(target, class_name, "train", "foreground_mask"))
        if os.path.isdir(dest) and not replace:
            added = [f for f in os.listdir(fg_src) if not os.path.exists(os.path.join(dest, f))]
            for f in added:
                shutil.copy2(os.path.join(fg_src, f), os.path.join(dest, f))
            print(f"{dest} exists: kept its masks, added {len(added)} missing ones (--replace to overwrite)")
        else:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            staged = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=".masks-")
            shutil.copytree(fg_src, os.path.join(staged, "masks"))
            replace_path(os.path.join(staged, "masks"), dest)
            shutil.rmtree(staged, ignore_errors=True)
        placed += 1
    print(f"foreground masks placed for {placed} classes of {dataset}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(SOURCES))
    p.add_argument("--root", default="data", help="datasets go to <root>/<dataset>")
    p.add_argument("--url", help="download the archive from this mirror instead")
    p.add_argument("--no_masks", action="store_false", dest="masks", help="skip the official foreground masks")
    p.add_argument("--replace", action="store_true",
                   help="replace class folders and foreground masks that already exist (default: keep them)")
    a = p.parse_args(argv)
    try:
        download_dataset(a.dataset, os.path.join(a.root, a.dataset), a.url, a.masks, a.replace)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; partial downloads stay as .part files and resume on the next run", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
