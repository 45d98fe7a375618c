"""torchrun with 2 gloo processes on the CPU against one process: the same training and the same metrics."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_cli import TINY

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


def main_py(*args, processes=1, timeout=300, script="main.py", ok=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable] if processes == 1 else [TORCHRUN, "--nproc_per_node", str(processes)]
    done = subprocess.run(launcher + [os.path.join(ROOT, script), *args], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this python")
def test_two_processes_train_like_one_and_shard_evaluation_exactly(tmp_path, demo_root):
    base = ["--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root, *TINY, "--epochs", "3",
            "--step_train", "1"]
    main_py("--mode", "train", *base, "--train_batch_size", "16", "--output_dir", str(tmp_path / "one"))
    main_py("--mode", "train", *base, "--train_batch_size", "8", "--output_dir", str(tmp_path / "two"), processes=2)

    def losses(run):
        with open(tmp_path / run / "train.csv") as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]
    # global batch 16 = 2 x 8, same samples per step; the ranks draw their own dropout masks, so not bit-equal:
    # measured within 0.3%; allowed 2% per epoch
    one, two = losses("one"), losses("two")
    assert len(one) == len(two) == 3 and all(abs(a - b) <= 0.02 * abs(a) for a, b in zip(one, two)), (one, two)

    checkpoint = str(tmp_path / "one" / "checkpoints" / "patchguard_demo_widget.pth")
    test = ["--mode", "test", *base, "--checkpoint", checkpoint, "--epsilon_test", "8", "--step_test", "2",
            "--test_batch_size", "8"]
    main_py(*test, "--output_dir", str(tmp_path / "eval_one"))
    main_py(*test, "--output_dir", str(tmp_path / "eval_two"), processes=2)
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text())["settings"] for run in ("eval_one", "eval_two"))
    for s, t in zip(a, b):
        for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap"):
            assert s[key] == pytest.approx(t[key], abs=1e-6), key


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this python")
def test_two_processes_resume_to_the_same_weights(tmp_path, demo_root):
    args = ["--mode", "train", "--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root, *TINY,
            "--epochs", "2", "--step_train", "1", "--train_batch_size", "4", "--seed", "5"]
    main_py(*args, "--output_dir", str(tmp_path / "full"), processes=2)
    part = ["--output_dir", str(tmp_path / "part")]
    # 60 training images, 2 ranks x 4 per step: 8 steps per epoch; all ranks stop in the middle of epoch 2
    main_py("12", *args, *part, processes=2, script=os.path.join("tests", "interrupted_main.py"), ok=False)
    last = torch.load(tmp_path / "part" / "checkpoints" / "patchguard_demo_widget_last.pth", weights_only=True)
    assert last["epoch"] == 0
    main_py(*args, *part, "--resume", processes=2)
    a, b = (torch.load(tmp_path / run / "checkpoints" / "patchguard_demo_widget.pth", weights_only=True)["model"]
            for run in ("full", "part"))
    assert a.keys() == b.keys()
    for k in a:  # gloo's two-rank average and the restored RNG states are deterministic: bit-equal
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert (tmp_path / "part" / "train.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_class_all_on_several_devices_runs_one_process_per_class(tmp_path, demo_root):
    data = tmp_path / "data"
    for name in ("bottle", "screw"):
        shutil.copytree(os.path.join(demo_root, "widget"), data / name)
    out = tmp_path / "runs"
    main_py("--mode", "all", "--dataset", "mvtec", "--class_name", "all", "--dataset_dir", str(data), "--output_dir",
            str(out), *TINY, "--epochs", "1", "--step_train", "1", "--step_test", "1", "--epsilon_test", "8",
            "--num_visualization", "1", "--devices", "0", "1")
    lines = (out / "summary.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["bottle", "screw", "mean"]
    for name, device in (("bottle", 0), ("screw", 1)):
        assert f"class {name} on device {device}" in (out / "log.txt").read_text()
        assert (out / name / "metrics.json").exists() and (out / name / "launch.log").exists()


def _rank_step(rank: int, store: str, out: str) -> None:
    """One rank of two: its shard's loss, gradients averaged by GradientAveraging, one SGD step."""
    import torch.distributed as dist

    from utils.distributed import GradientAveraging, ShardedShuffle
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model, images, labels = _tiny_problem()
        shard = list(ShardedShuffle(len(images), seed=0, epoch=0))
        optimizer = GradientAveraging(torch.optim.SGD(model.parameters(), lr=0.1))
        _loss(model, images[shard], labels[shard]).backward()
        optimizer.step()
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters()},
                    "weights": {n: p.detach() for n, p in model.named_parameters()}}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _tiny_problem():
    from models.patchguard import PatchGuard, PatchGuardConfig
    torch.manual_seed(0)
    model = PatchGuard(PatchGuardConfig(backbone="test_vit", image_size=32, patch_size=8, feature_layers=(2,),
                                        reg_layers=(2,), hidden_dim=32)).eval()   # dropout off
    images, labels = torch.rand(8, 3, 32, 32), (torch.rand(8, 16) > 0.7).float()
    return model, images, labels


def _loss(model, images, labels):
    from losses.patchguard_loss import patchguard_loss
    logits, maps = model.forward_with_attention(images)
    return patchguard_loss(logits, labels, maps, (0.05,))


def test_two_ranks_average_gradients_exactly_like_one_process_on_the_whole_batch(tmp_path):
    """The mean of the two shards' gradients = the whole batch's gradient (to 1e-6), and one SGD step gives the
    same weights: a sum instead of a mean, or a missing all-reduce, fails here."""
    import torch.multiprocessing as mp
    mp.spawn(_rank_step, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2, join=True)
    model, images, labels = _tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _loss(model, images, labels).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank.{rank}", weights_only=True)
        assert {n for n, g in got["grads"].items() if g is not None} == set(grads)
        for name, p in model.named_parameters():
            if name in grads:
                torch.testing.assert_close(got["grads"][name], grads[name], atol=1e-6, rtol=1e-5, msg=name)
            torch.testing.assert_close(got["weights"][name], p.detach(), atol=1e-6, rtol=1e-5, msg=name)
