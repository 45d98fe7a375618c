"""Official released PatchGuard checkpoints (MVTec AD: 15 classes, VisA: 12), saved under the name --mode test reads.

    python download_weight.py --dataset mvtec --class_name bottle --checkpoint_dir weights
    python main.py --mode test --dataset mvtec --class_name bottle --dataset_dir data/mvtec --checkpoint_dir weights
"""
import argparse
import os
import sys

from datasets import registry
from utils.download import gdown_fetch, gdown_folder_files
from utils.errors import UserError

WEIGHT_FOLDERS = {"mvtec": "1Wn_1cE700ORpRmSfDzOfOpYyhAjxsyHr", "visa": "1_MYqikiJvTKp3z_ZHHVjViYF6Yn0oyVu"}


def download_weights(dataset: str, class_name: str, checkpoint_dir: str) -> str:
    if dataset not in WEIGHT_FOLDERS:
        raise UserError(f"no official weights for '{dataset}': released for {', '.join(WEIGHT_FOLDERS)}")
    if class_name not in registry.classes(dataset):
        raise UserError(f"unknown class '{class_name}' for {dataset}: expected one of "
                        f"{', '.join(registry.classes(dataset))}")
    dest = os.path.join(checkpoint_dir, f"patchguard_{dataset}_{class_name}.pth")
    if os.path.isfile(dest):
        return dest
    files = gdown_folder_files(WEIGHT_FOLDERS[dataset], dest)
    match = [(n, i) for n, i in files if class_name in n and n.endswith((".pth", ".pt"))]
    if not match:
        raise UserError(f"no checkpoint for {class_name} in the official {dataset} folder "
                        f"(files: {', '.join(n for n, _ in files[:8])})")
    name, file_id = min(match, key=lambda m: len(m[0]))  # 'screw' must not pick 'metal_screw'
    return gdown_fetch(file_id, dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(WEIGHT_FOLDERS))
    p.add_argument("--class_name", required=True)
    p.add_argument("--checkpoint_dir", default="weights")
    a = p.parse_args(argv)
    try:
        print(download_weights(a.dataset, a.class_name, a.checkpoint_dir))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
