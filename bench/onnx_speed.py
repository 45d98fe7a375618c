"""Images/s of a model in PyTorch against the same model exported to ONNX (ONNX Runtime), on the CPU.

    python bench/onnx_speed.py --backbone vit_small_patch14_dinov2 --image_size 224 --batches 1 16

The model is PatchGuard at random init (speed does not depend on the weights); both run the full read-out (scores
and smoothed maps). Threads: torch's and ONNX Runtime's defaults on this machine.
"""
import argparse
import os
import sys
import tempfile

import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.export import OPSET, Deployable, throughput  # noqa: E402
from methods import get_method  # noqa: E402
from models.patchguard import PatchGuardConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    method = get_method("patchguard")
    torch.manual_seed(0)
    model = method.build_model(PatchGuardConfig(backbone=a.backbone, image_size=a.image_size)).eval()
    deployable = Deployable(method, model).eval()
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    torch.onnx.export(deployable, (torch.rand(2, 3, a.image_size, a.image_size),), path, dynamo=True,
                      opset_version=OPSET, input_names=["images"], output_names=["scores", "maps"],
                      dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    print(f"{a.backbone} at {a.image_size}px, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    print("| batch | PyTorch images/s | ONNX Runtime images/s | ratio |")
    print("|---|---|---|---|")
    for batch in a.batches:
        torch_rate = throughput(deployable, a.image_size, batch, a.repeats)
        ort_rate = throughput(session, a.image_size, batch, a.repeats)
        print(f"| {batch} | {torch_rate:.1f} | {ort_rate:.1f} | {ort_rate / torch_rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
