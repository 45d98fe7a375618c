"""End-to-end runs through main.main on small real data, resume, interrupts, and every user error."""
import errno
import json
import os
import shutil

import pytest
import torch

import main as cli
from tests.conftest import FIXTURE, MPDD

TINY = ["--backbone", "test_vit", "--feature_layers", "6", "--reg_layers", "2", "4", "6", "--image_size", "32",
        "--patch_size", "8", "--hidden_dim", "64", "--device", "cpu", "--num_workers", "0", "--no_tqdm",
        "--precision", "fp32"]  # tests that compare numbers pin fp32 (--precision auto may pick bf16)


def run(*args):
    return cli.main(list(args))


def demo_args(demo_root, out, *extra):
    return ["--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root, "--output_dir", str(out),
            *TINY, "--train_batch_size", "16", "--step_train", "1", *extra]


@pytest.mark.skipif(not os.path.isdir(MPDD), reason="shared data not present")
def test_end_to_end_on_mpdd_metal_plate(tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", "mpdd", "--class_name", "metal_plate", "--dataset_dir", MPDD, "--output_dir", str(out),
            *TINY, "--epochs", "1", "--train_batch_size", "16", "--step_train", "1", "--test_batch_size", "32",
            "--epsilon_test", "2", "8", "--step_test", "2", "--num_visualization", "3"]
    assert run("--mode", "train", *args) == 0
    ckpt = out / "checkpoints" / "patchguard_mpdd_metal_plate.pth"
    assert ckpt.exists() and (out / "checkpoints" / "patchguard_mpdd_metal_plate_last.pth").exists() and (out / "train.csv").exists()
    assert json.loads((out / "config.json").read_text())["method_options"]["model"]["backbone"] == "test_vit"
    assert run("--mode", "test", *args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 97 and metrics["num_anomalous"] == 71
    settings = metrics["settings"]
    assert [s["attack"] for s in settings] == ["none", "pgd", "pgd"]
    assert [round(s.get("eps_255", 0)) for s in settings] == [0, 2, 8]
    for s in settings:
        assert 0 <= s["image_auroc"] <= 1 and 0 <= s["pixel_auroc"] <= 1
    for s in settings[1:]:
        assert s["checks"]["ok"] and s["checks"]["max_abs_delta"] <= s["eps"] + 1e-6
    assert run("--mode", "visualization", *args) == 0
    assert len(list((out / "visualization").glob("*.png"))) == 3
    assert "PGD-2 eps 8/255" in (out / "log.txt").read_text()


def test_headct_like_set_without_masks_gives_image_metrics_only(tmp_path, demo_root):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(demo_root, "widget"), data / "widget")
    shutil.rmtree(data / "widget" / "ground_truth")
    out = tmp_path / "run"
    assert run("--mode", "all", *demo_args(str(data), out, "--epochs", "1", "--step_test", "1",
                                           "--num_visualization", "2")) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert all("pixel_auroc" not in s and "image_auroc" in s for s in settings)


def test_resume_gives_the_same_weights(tmp_path, demo_root, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run("--mode", "train", *demo_args(demo_root, full, "--epochs", "2", "--seed", "3")) == 0

    from methods.patchguard import PatchGuardMethod
    real_step, calls = PatchGuardMethod.train_step, {"n": 0}

    def interrupt_in_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # 4 steps per epoch: epoch 1 completes, epoch 2 is cut short
            raise KeyboardInterrupt
        return real_step(*a, **k)
    monkeypatch.setattr(PatchGuardMethod, "train_step", interrupt_in_second_epoch)
    assert run("--mode", "train", *demo_args(demo_root, part, "--epochs", "2", "--seed", "3")) == 2
    last = torch.load(part / "checkpoints" / "patchguard_demo_widget_last.pth", weights_only=False)
    assert last["epoch"] == 0
    monkeypatch.setattr(PatchGuardMethod, "train_step", real_step)
    assert run("--mode", "train", *demo_args(demo_root, part, "--epochs", "2", "--seed", "3", "--resume")) == 0
    a = torch.load(full / "checkpoints" / "patchguard_demo_widget.pth", weights_only=False)["model"]
    b = torch.load(part / "checkpoints" / "patchguard_demo_widget.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert (part / "train.csv").read_text().count("\n") == 3  # header + 2 epochs, none repeated


def one_line_error(capsys, code, pattern):
    import re
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


def test_bad_inputs_give_one_line_errors(tmp_path, demo_root, capsys):
    base = ["--mode", "train", "--output_dir", str(tmp_path / "o"), *TINY, "--epochs", "1"]
    one_line_error(capsys, run(*base, "--dataset", "mvtec", "--class_name", "bottle",
                               "--dataset_dir", str(tmp_path / "nowhere")), "dataset folder not found")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, run(*base, "--dataset", "mvtec", "--class_name", "bottle",
                               "--dataset_dir", str(tmp_path / "empty")), r"class 'bottle' not found.*bottle/train/good")
    one_line_error(capsys, run(*base, "--dataset", "imagenet", "--class_name", "x", "--dataset_dir", demo_root),
                   "invalid choice: 'imagenet'.*mvtec")
    one_line_error(capsys, run(*base, "--dataset", "mvtec", "--class_name", "bottel", "--dataset_dir", demo_root),
                   "class 'bottel' not found.*classes of mvtec: bottle")
    one_line_error(capsys, run(*demo_args(demo_root, tmp_path / "o", "--image_size", "36")), "not a multiple of")
    one_line_error(capsys, run(*demo_args(demo_root, tmp_path / "o", "--backbone", "resnet_nonsense")),
                   "unknown backbone")
    one_line_error(capsys, run(*demo_args(demo_root, tmp_path / "o", "--backbone_weights", str(tmp_path / "w.pth"))),
                   "backbone weights file not found")


def test_unreadable_image(tmp_path, demo_root, capsys):
    shutil.copytree(os.path.join(demo_root, "widget"), tmp_path / "d" / "widget")
    (tmp_path / "d" / "widget" / "train" / "good" / "999.png").write_bytes(b"\x89PNG garbage")
    one_line_error(capsys, run("--mode", "train", *demo_args(str(tmp_path / "d"), tmp_path / "o", "--epochs", "1")),
                   r"cannot read image .*999.png")


@pytest.mark.skipif(not os.path.isdir(FIXTURE), reason="official fixture not present")
def test_checkpoint_from_another_architecture(tmp_path, demo_root, capsys):
    code = run("--mode", "test", *demo_args(demo_root, tmp_path / "o"),
               "--checkpoint", os.path.join(FIXTURE, "patchguard_tiny.pth"))
    one_line_error(capsys, code, "another architecture than test_vit")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    one_line_error(capsys, run("--mode", "test", *demo_args(demo_root, tmp_path / "o"),
                               "--checkpoint", str(tmp_path / "junk.pth")), "cannot read checkpoint")


def test_unwritable_output_folder(tmp_path, demo_root, capsys):
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, run("--mode", "train", *demo_args(demo_root, tmp_path / "file" / "run")),
                   "not writable")


def test_full_disk_keeps_previous_checkpoint(tmp_path, demo_root, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run("--mode", "train", *demo_args(demo_root, out, "--epochs", "1")) == 0
    final = out / "checkpoints" / "patchguard_demo_widget.pth"
    before = final.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    one_line_error(capsys, run("--mode", "train", *demo_args(demo_root, out, "--epochs", "1", "--overwrite")),
                   "disk is full")
    assert final.read_bytes() == before
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_class_all_writes_summary_and_foreground_mode(tmp_path, demo_root):
    data = tmp_path / "data"
    for name in ("bottle", "screw"):
        shutil.copytree(os.path.join(demo_root, "widget"), data / name)
        shutil.rmtree(data / name / "train" / "foreground_mask")  # estimated instead
    out = tmp_path / "runs"
    args = ["--dataset", "mvtec", "--class_name", "all", "--dataset_dir", str(data), "--output_dir", str(out),
            *TINY, "--epochs", "1", "--step_train", "1", "--step_test", "1", "--epsilon_test", "8"]
    assert run("--mode", "train", *args) == 0
    assert run("--mode", "test", *args) == 0
    lines = (out / "summary.csv").read_text().strip().splitlines()
    assert lines[0].startswith("class,clean image_auroc,clean pixel_auroc,clean aupro,PGD-1 eps 8/255 image_auroc")
    assert [l.split(",")[0] for l in lines[1:]] == ["bottle", "screw", "mean"]
    assert (out / "summary.md").exists() and (out / "bottle" / "metrics.json").exists()
    assert run("--mode", "foreground", *args[:-8], "--class_name", "bottle", "--output_dir", str(out / "fg")) == 0
    assert (out / "fg" / "foreground" / "grid.png").exists()
    report = json.loads((out / "fg" / "foreground" / "foreground.json").read_text())
    assert report["test_anomalies"] == 24 and report["mean_defect_coverage"] > 0.9


def test_config_file_values_are_parsed_like_the_command_line(tmp_path, capsys):
    from config import parse_config
    (tmp_path / "c.json").write_text(json.dumps({"dataset": "demo", "class_name": "widget", "dataset_dir": "d",
                                                 "step_test": 10, "epsilon_test": [2, "8"], "epochs": "3"}))
    cfg = parse_config(["--config", str(tmp_path / "c.json"), "--epochs", "5"])
    assert cfg.eval.step_test == (10,) and cfg.eval.epsilon_test == (2 / 255, 8 / 255) and cfg.train.epochs == 5
    (tmp_path / "bad.json").write_text(json.dumps({"epochs": "many"}))
    one_line_error(capsys, run("--config", str(tmp_path / "bad.json")), "'epochs' must be int")
    (tmp_path / "typo.json").write_text(json.dumps({"epoch": 3}))
    one_line_error(capsys, run("--config", str(tmp_path / "typo.json")), "unknown keys .*epoch")


def test_a_runs_config_json_repeats_the_run(tmp_path, demo_root):
    from config import parse_config
    from utils.readout import READOUT_KEYS
    out = tmp_path / "run"
    assert run("--mode", "train", *demo_args(demo_root, out, "--epochs", "1", "--epsilon_train", "4",
                                             "--epsilon_test", "2", "8")) == 0
    original = json.loads((out / "config.json").read_text())
    again = parse_config(["--config", str(out / "config.json"), "--mode", "test"])
    assert again.mode == "test" and not again.train.resume
    repeated = json.loads(json.dumps(again.as_dict()))
    for group in ("method_options", "data", "eval"):
        for key, value in original[group].items():
            if key.startswith("epsilon"):
                assert repeated[group][key] == pytest.approx(value), key
            elif group == "eval" and key in READOUT_KEYS:  # the run's read-out, given explicitly by the file
                assert repeated[group][key] == original["method_options"]["model"][key], key
            else:
                assert repeated[group][key] == value, key
    assert again.train.epsilon_train == pytest.approx(4 / 255)


def test_default_workers_share_the_cores_among_gpu_processes(monkeypatch):
    from config import parse_config
    args = ["--dataset", "mvtec", "--class_name", "bottle", "--dataset_dir", "data"]
    assert parse_config(args + ["--device", "cpu"]).data.num_workers == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert parse_config(args).data.num_workers == 7  # one core feeds the GPU
    assert parse_config(args + ["--num_workers", "3"]).data.num_workers == 3
    assert parse_config(args + ["--device", "cpu"]).data.num_workers == 2
    assert parse_config(["--dataset", "mvtec", "--class_name", "all", "--dataset_dir", "data", "--devices", "0", "1"]
                        ).data.num_workers == 3  # 2 class processes at once: 4 cores each
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 ranks on this node
    assert parse_config(args).data.num_workers == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert parse_config(args).data.num_workers == 8
