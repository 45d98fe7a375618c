"""Can the data side keep an accelerator busy? Training samples per second (image + its pseudo-anomaly, made in
DataLoader workers exactly as in training, one DataLoader per epoch) by number of workers.

    python bench/data.py --image_size 224 --batch_size 16 --workers 0 1 2
    python bench/data.py --image_size 224 --batch_size 16 --workers 4 8 --consume 250

--consume: samples/s the model takes (batch / seconds per training step, from bench/speed.py); the script then
prints how long each epoch the model would wait for data with each worker count.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import parse_config  # noqa: E402
from datasets.assembly import train_dataset  # noqa: E402
from engine.common import loader  # noqa: E402
from utils.distributed import ShardedShuffle  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=14)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3, help="epochs timed per worker count")
    p.add_argument("--consume", type=float, help="samples/s the model consumes")
    p.add_argument("--pseudo_anomaly", choices=("foreground", "attention"), default="foreground")
    p.add_argument("--dataset", default="mpdd")
    p.add_argument("--class_name", default="metal_plate")
    p.add_argument("--dataset_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mpdd"))
    a = p.parse_args()
    cfg = parse_config(["--dataset", a.dataset, "--class_name", a.class_name, "--dataset_dir", a.dataset_dir,
                        "--image_size", str(a.image_size), "--pseudo_anomaly", a.pseudo_anomaly,
                        "--output_dir", "/tmp/patchguard-bench"])
    dataset = train_dataset(cfg, a.image_size, a.patch_size)
    n = len(dataset)
    print(f"{a.dataset}/{a.class_name}: {n} training images at {a.image_size}px, batch {a.batch_size}, "
          f"{a.pseudo_anomaly} pseudo-anomalies, {os.cpu_count()} CPUs here")
    for workers in a.workers:
        first, total = [], 0.0
        for epoch in range(a.epochs):
            dataset.set_epoch(epoch)
            t0 = time.perf_counter()
            for i, _ in enumerate(loader(dataset, a.batch_size, workers, sampler=ShardedShuffle(n, epoch, epoch))):
                if i == 0:
                    first.append(time.perf_counter() - t0)
            total += time.perf_counter() - t0
        rate = a.epochs * n / total
        line = (f"workers {workers:2d}: {rate:6.1f} samples/s, epoch {total / a.epochs:.2f} s "
                f"(first batch after {sum(first) / len(first):.2f} s)")
        if a.consume:
            wait = max(0.0, total / a.epochs - n / a.consume)
            line += f"; at {a.consume:g} samples/s the model waits {wait:.2f} s of each {total / a.epochs:.2f} s epoch"
        print(line, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
