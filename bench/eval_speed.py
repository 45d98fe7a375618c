"""Evaluation timing: the full evaluation of a checkpoint and the share spent in metrics, plus metrics alone at
full MVTec AD scale (1725 maps of 224x224).

    python bench/eval_speed.py --checkpoint runs/mpdd/metal_plate/checkpoints/patchguard_mpdd_metal_plate.pth \\
        --dataset mpdd --class_name metal_plate --dataset_dir ../shared/data/mpdd --epsilon_test 2 8 --step_test 10
    python bench/eval_speed.py --metrics_only
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.metrics import evaluate  # noqa: E402


def metrics_at_scale(n: int = 1725, size: int = 224, anomalous: float = 0.67) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(n) < int(n * anomalous)
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(labels):  # one or two blobs per anomalous image
        for _ in range(rng.integers(1, 3)):
            y, x, r = rng.integers(20, size - 20, 2).tolist() + [int(rng.integers(4, 20))]
            masks[i, max(0, y - r):y + r, max(0, x - r):x + r] = True
    maps = (rng.normal(size=(n, size, size)) + 2 * masks).astype(np.float32)
    scores = maps.reshape(n, -1).max(1)
    t0 = time.perf_counter()
    out = evaluate(scores, labels, maps, masks)
    print(f"metrics on {n} maps of {size}x{size} ({maps.size / 1e6:.0f}M pixels): {time.perf_counter() - t0:.1f} s "
          f"(pixel AUROC {out['pixel_auroc']:.4f}, AUPRO {out['aupro']:.4f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics_only", action="store_true")
    a, rest = p.parse_known_args()
    if a.metrics_only:
        metrics_at_scale()
        return
    from engine.common import setup_logging
    from engine.evaluate import run_test
    from config import parse_config
    out = tempfile.mkdtemp(prefix="patchguard-eval-bench-")
    cfg = parse_config(["--mode", "test", "--device", "cpu", "--no_tqdm", "--output_dir", out] + rest)
    setup_logging(out)
    r = run_test(cfg)
    print(f"full evaluation {r['seconds']:.1f} s, metrics {r['metrics_seconds']:.2f} s "
          f"({100 * r['metrics_seconds'] / r['seconds']:.1f}%)")
    for s in r["settings"]:
        print(f"  {s['attack']:>5} eps {s['eps_255']:g}/255 steps {s['steps']}: {s['seconds']:.1f} s "
              f"(metrics {s['metrics_seconds']:.2f} s)")


if __name__ == "__main__":
    main()
