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

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mpdd")


def report(what: str, times, warmup: int) -> None:
    first, timed = times[:warmup], sorted(times[warmup:])
    warm = f"; warm-up {', '.join(f'{t:.1f}' for t in first)} s" if first else ""
    print(f"{what}: median {timed[len(timed) // 2]:.3f} s/batch (min {timed[0]:.3f}, max {timed[-1]:.3f}{warm})")


def time_steps(backbone: str, image_size: int, batch_size: int, device: str = "cpu", precision: str = "fp32",
               compile: bool = False, steps: int = 5, warmup: int = 1, dataset_dir: str = DATA, train: bool = True,
               step_train: int = 10, train_attack: str = "pgd", step_test: int = 10, num_workers: int = 2,
               dataset: str = "mpdd", class_name: str = "metal_plate", report_to=None) -> dict:
    """Median seconds per training step (data loading and pseudo-anomalies included) and per PGD evaluation batch
    (attack + scoring forward) of our PatchGuard."""
    cfg = parse_config(["--dataset", dataset, "--class_name", class_name, "--dataset_dir", dataset_dir,
                        "--backbone", backbone, "--image_size", str(image_size), "--device", device,
                        "--train_batch_size", str(batch_size), "--step_train", str(step_train),
                        "--train_attack", train_attack, "--num_workers", str(num_workers),
                        "--output_dir", "/tmp/patchguard-bench", "--precision", precision]
                       + (["--compile"] if compile else [])
                       + ([] if backbone.endswith("dinov2") else ["--feature_layers", "1", "--reg_layers", "1",
                                                                 "--reg_weights", "0.05"]))
    dev = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    method = get_method("patchguard")
    model = method.build_model(cfg.method_options.model).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {"precision": cfg.precision, "precision_reason": cfg.precision_reason, "compiled": compile}
    if train:
        dataset = train_dataset(cfg, image_size, model.patch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)

        def batches():
            epoch = 0
            while True:
                dataset.set_epoch(epoch)
                yield from loader(dataset, batch_size, num_workers, sampler=ShardedShuffle(len(dataset), epoch, epoch))
                epoch += 1
        it = batches()
        times = []
        for _ in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            batch = next(it)  # loading + pseudo-anomalies count towards the step
            while len(batch["image"]) < batch_size:
                batch = next(it)
            method.train_step(model, batch, optimizer, cfg, dev)
            sync()
            times.append(time.perf_counter() - t0)
        out["train_s_per_step"] = sorted(times[warmup:])[len(times[warmup:]) // 2]
        out["train_warmup_s"] = times[:warmup]
        if report_to:
            report_to("training step", times, warmup)
    model.eval()
    attack = PGD(model, 8 / 255, step_test, model_mode="eval", compile=compile)
    x = torch.rand(batch_size, 3, image_size, image_size, device=dev)
    labels = torch.zeros(batch_size, model.num_patches, device=dev)
    times = []
    for _ in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with autocast(dev, cfg.bf16):
            adv = attack(x, labels)
            with torch.no_grad():
                model(adv)
        sync()
        times.append(time.perf_counter() - t0)
    out["eval_s_per_batch"] = sorted(times[warmup:])[len(times[warmup:]) // 2]
    out["step_test"] = step_test
    if report_to:
        report_to(f"PGD-{step_test} evaluation", times, warmup)
    return out


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
    p.add_argument("--dataset_dir", default=DATA)
    a = p.parse_args()
    attack = f"PGD-{a.step_train}" if a.train_attack == "pgd" else a.train_attack
    print(f"{a.backbone} at {a.image_size}px, batch {a.batch_size}, {attack} training, --precision {a.precision}"
          f"{', compiled attacks' if a.compile else ''}, {a.device}, {torch.get_num_threads()} threads")
    out = time_steps(a.backbone, a.image_size, a.batch_size, a.device, a.precision, a.compile, a.steps, a.warmup,
                     a.dataset_dir, step_train=a.step_train, train_attack=a.train_attack, step_test=a.step_test,
                     num_workers=a.num_workers, dataset=a.dataset, class_name=a.class_name, report_to=report)
    print(f"precision: {out['precision']} ({out['precision_reason']})")


if __name__ == "__main__":
    main()
