"""Ours against the official code on one device, in one call: seconds per PGD-10 training step and per PGD-10
evaluation batch (ours in fp32, bf16, bf16 + --compile), peak memory, PGD-1000 evaluation images/s, and the GPU's
utilisation while a real training run goes. Each part's figures are added to <out>/gpu.json as soon as they exist,
so a run cut short still returns what it finished.

    python bench/gpu.py --out $OUT [--official .gpu_bench/official --official_tool .gpu_bench/official_speed.py]
    python bench/gpu.py --device cpu --sizes 32:4 --backbone test_vit --steps 1 --out /tmp/x   # smoke test

--official: the official repository at af39835 (never committed: the code has no licence); its timing comes
from ../shared/tools/official_speed.py copied beside it (the shared folder does not travel to a device machine).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.speed import time_steps  # noqa: E402


class Results:
    def __init__(self, out: str):
        self.path, self.data = os.path.join(out, "gpu.json"), {}
        os.makedirs(out, exist_ok=True)

    def add(self, key: str, value) -> None:
        self.data[key] = value
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(self.path + ".tmp", self.path)
        print(key, json.dumps(value), flush=True)


def utilisation_during(command, env) -> dict:
    """nvidia-smi sampled every 200 ms while `command` runs: mean and share of samples at >= 90%."""
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                samples.append(float(out.stdout.split()[0]))
            time.sleep(0.2)
    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    stop.set()
    thread.join()
    return {"seconds": time.perf_counter() - start, "returncode": done.returncode, "samples": len(samples),
            "mean_utilisation": sum(samples) / len(samples) if samples else None,
            "share_at_least_90": sum(s >= 90 for s in samples) / len(samples) if samples else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/patchguard-gpu-bench"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--sizes", nargs="+", default=["112:8", "224:16"], help="image_size:batch pairs")
    p.add_argument("--steps", type=int, default=5, help="timed steps / batches per figure")
    p.add_argument("--pgd_long", type=int, default=1000, help="steps of the long evaluation attack (0: skip)")
    p.add_argument("--official", help="the official repository at af39835")
    p.add_argument("--official_tool", help="official_speed.py")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mpdd"))
    a = p.parse_args()
    results = Results(a.out)
    cuda = a.device == "cuda" and torch.cuda.is_available()
    results.add("device", torch.cuda.get_device_name(0) if cuda else "cpu")
    if a.official and a.official_tool:  # first: the anchor every ratio needs
        class_root = os.path.join(a.out, "official_data")
        os.makedirs(class_root, exist_ok=True)
        link = os.path.join(class_root, "carpet")  # 'carpet': the official code uses the whole image
        if not os.path.exists(link):
            os.symlink(os.path.abspath(os.path.join(a.data, "metal_plate")), link)
        for size, batch in (s.split(":") for s in a.sizes):
            env = dict(os.environ, DEV="cuda" if cuda else "cpu",
                       EXTRA=f"--image_size {size} --train_batch_size {batch} --test_batch_size {batch} "
                             f"--step_train 10 --num_workers 4")
            done = subprocess.run([sys.executable, a.official_tool, a.official, class_root, "carpet", str(a.steps)],
                                  env=env, capture_output=True, text=True, timeout=600)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            results.add(f"official_{size}px_b{batch}", json.loads(lines[-1]) if lines else
                        {"error": (done.stderr or done.stdout)[-800:]})
    sizes = [tuple(int(v) for v in s.split(":")) for s in a.sizes]

    def ours(precision: str, compiled: bool) -> None:
        for size, batch in sizes:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            figures = time_steps(a.backbone, size, batch, device=a.device, precision=precision, compile=compiled,
                                 steps=a.steps, dataset_dir=a.data)
            if cuda:
                figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            results.add(f"ours_{size}px_b{batch}_{precision}{'_compiled' if compiled else ''}", figures)

    # most wanted first, so a run cut at its time limit still answers: the default precision against the official
    # step, the GPU's utilisation while training, then fp32, PGD-1000 and the compiled variant
    ours("bf16" if cuda else "fp32", False)
    if cuda and shutil.which("nvidia-smi"):
        out = os.path.join(a.out, "utilisation_run")
        command = [sys.executable, "main.py", "--mode", "train", "--dataset", "mpdd", "--class_name", "metal_plate",
                   "--dataset_dir", a.data, "--image_size", "224", "--train_batch_size", "16", "--epochs", "3",
                   "--precision", "auto", "--foreground", "none", "--output_dir", out, "--no_tqdm", "--overwrite"]
        results.add("utilisation_training_224px_b16", utilisation_during(command, dict(os.environ)))
    if cuda:
        ours("fp32", False)
    if a.pgd_long:
        size, batch = sizes[-1]
        figures = time_steps(a.backbone, size, batch, device=a.device, precision="bf16" if cuda else "fp32",
                             steps=1, dataset_dir=a.data, train=False, step_test=a.pgd_long)
        results.add(f"ours_pgd{a.pgd_long}_{size}px", {"images_per_s": batch / figures["eval_s_per_batch"],
                                                        **figures})
    if cuda:
        ours("bf16", True)

if __name__ == "__main__":
    main()
