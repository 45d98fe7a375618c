"""Seconds per training step (data loading and pseudo-anomalies included) and per PGD evaluation batch.

    python bench/speed.py --backbone vit_small_patch14_dinov2 --image_size 112 --batch_size 8 --step_train 10
    python bench/speed.py --device cuda --image_size 224 --batch_size 16 [--precision bf16] [--compile]

The first (warm-up) step is reported apart: with --compile it holds the compile.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import PGD  # noqa: E402
from datasets.assembly import train_dataset  # noqa: E402
from engine.common import loader  # noqa: E402
from methods import get_method  # noqa: E402
from utils.distributed import ShardedShuffle  # noqa: E402
from utils.precision import PRECISIONS, autocast  # noqa: E402
from config import parse_config  # noqa: E402


def report(what: str, times, warmup: int) -> None:
    first, timed = times[:warmup], sorted(times[warmup:])
    warm = f"; warm-up {', '.join(f'{t:.1f}' for t in first)} s" if first else ""
    print(f"{what}: median {timed[len(timed) // 2]:.3f} s/batch (min {timed[0]:.3f}, max {timed[-1]:.3f}{warm})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--step_train", type=int, default=10)
    p.add_argument("--train_attack", choices=("pgd", "fgsm_rs", "nfgsm"), default="pgd")
    p.add_argument("--step_test", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed training steps / evaluation batches")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the attacks' forward/backward")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--dataset", default="mpdd")
    p.add_argument("--class_name", default="metal_plate")
    p.add_argument("--dataset_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mpdd"))
    a = p.parse_args()
    cfg = parse_config(["--dataset", a.dataset, "--class_name", a.class_name, "--dataset_dir", a.dataset_dir,
                        "--backbone", a.backbone, "--image_size", str(a.image_size), "--device", a.device,
                        "--train_batch_size", str(a.batch_size), "--step_train", str(a.step_train),
                        "--train_attack", a.train_attack,
                        "--num_workers", str(a.num_workers), "--output_dir", "/tmp/patchguard-bench"]
                       + ["--precision", a.precision] + (["--compile"] if a.compile else []))
    device = torch.device(a.device)
    torch.manual_seed(0)
    method = get_method("patchguard")
    model = method.build_model(cfg.method_options.model).to(device)
    dataset = train_dataset(cfg, a.image_size, model.patch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    attack = f"PGD-{a.step_train}" if a.train_attack == "pgd" else a.train_attack
    print(f"{a.backbone} at {a.image_size}px, batch {a.batch_size}, {attack} training, {cfg.precision} "
          f"({cfg.precision_reason}){', compiled attacks' if a.compile else ''}, {device}, "
          f"{torch.get_num_threads()} threads")

    def batches():
        epoch = 0
        while True:
            dataset.set_epoch(epoch)
            yield from loader(dataset, a.batch_size, a.num_workers, sampler=ShardedShuffle(len(dataset), epoch, epoch))
            epoch += 1
    it = batches()
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        batch = next(it)  # loading + pseudo-anomalies count towards the step
        while len(batch["image"]) < a.batch_size:
            batch = next(it)
        method.train_step(model, batch, optimizer, cfg, device)
        sync()
        times.append(time.perf_counter() - t0)
    report("training step", times, a.warmup)

    model.eval()
    attack = PGD(model, 8 / 255, a.step_test, model_mode="eval", compile=a.compile)
    x = torch.rand(a.batch_size, 3, a.image_size, a.image_size, device=device)
    labels = torch.zeros(a.batch_size, model.num_patches, device=device)
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        with autocast(device, cfg.bf16):
            adv = attack(x, labels)
            with torch.no_grad():
                model(adv)
        sync()
        times.append(time.perf_counter() - t0)
    report(f"PGD-{a.step_test} evaluation", times, a.warmup)


if __name__ == "__main__":
    main()
