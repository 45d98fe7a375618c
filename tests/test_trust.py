"""What a user must be able to rely on: unsafe checkpoints refused, finished work never lost, every option either
honoured or refused in one line, any class folder in an MVTec-style layout."""
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch

from tests.test_cli import TINY, demo_args, one_line_error, run

EVIL = """
import os, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"format": "patchguard-reimpl/1", "model": {}, "config": {}, "x": Evil()}, sys.argv[1])
"""


@pytest.fixture(scope="module")
def finished_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run("--mode", "train", *demo_args(demo_root, out, "--epochs", "1")) == 0
    return out


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, demo_root, capsys):
    import subprocess
    import sys
    evil, marker = tmp_path / "official.pth", tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", EVIL, str(evil), str(marker)], check=True)
    one_line_error(capsys, run("--mode", "test", *demo_args(demo_root, tmp_path / "o"), "--checkpoint", str(evil)),
                   r"refusing to load .*official.pth.*posix.system")
    assert not marker.exists()


def test_second_training_run_leaves_the_finished_model_alone(finished_run, demo_root, capsys):
    final = finished_run / "checkpoints" / "patchguard_demo_widget.pth"
    before, config = final.read_bytes(), (finished_run / "config.json").read_bytes()
    for mode in ("train", "all"):
        one_line_error(capsys, run("--mode", mode, *demo_args(demo_root, finished_run, "--epochs", "2")),
                       "holds a finished model; continue it with --resume.*--overwrite")
    assert final.read_bytes() == before and (finished_run / "config.json").read_bytes() == config


def test_interrupted_sweep_keeps_finished_settings_and_a_rerun_finishes_the_rest(finished_run, demo_root, monkeypatch):
    import engine.evaluate as evaluate
    real, calls, interrupt = evaluate.run_setting, [], [True]

    def interrupted_after_two(*args, **kwargs):
        calls.append(args[6:9])  # name, eps, steps
        if interrupt[0] and len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(evaluate, "run_setting", interrupted_after_two)
    args = ["--mode", "test", *demo_args(demo_root, finished_run, "--epsilon_test", "2", "4", "8", "--step_test", "1")]
    assert run(*args) == 2
    saved = json.loads((finished_run / "metrics.json").read_text())
    assert [(s["attack"], s["eps_255"]) for s in saved["settings"]] == [("none", 0), ("pgd", 2)]

    calls.clear()
    interrupt[0] = False
    assert run(*args) == 0
    assert [round(c[1] * 255) for c in calls] == [4, 8]  # only what was missing
    saved = json.loads((finished_run / "metrics.json").read_text())
    assert sorted(s["eps_255"] for s in saved["settings"]) == [0, 2, 4, 8]
    calls.clear()
    assert run(*args, "--recompute") == 0 and len(calls) == 4


def test_test_time_read_out_options_apply_and_are_logged(finished_run, demo_root):
    from engine.loading import load_for_evaluation
    from engine.common import setup_logging
    from config import parse_config
    cfg = parse_config(["--mode", "test", *demo_args(demo_root, finished_run, "--top_k", "1", "--smoothing_sigma", "2")])
    setup_logging(str(finished_run))
    method, model, _ = load_for_evaluation(cfg)
    assert (model.cfg.top_k, model.cfg.smoothing_sigma, model.cfg.smoothing_radius) == (1, 2.0, 7)
    logits = torch.tensor([[0.0, 5.0, 1.0] + [0.0] * (model.num_patches - 3)])
    assert float(method.read_out(model, logits).image_scores[0]) == 5.0  # top-1, not the checkpoint's top-3 mean
    log = (finished_run / "log.txt").read_text()
    assert "top_k 1 (command line), smoothing_sigma 2 (command line), smoothing_radius 7 (checkpoint)" in log


def test_visualization_honours_no_adv_test_and_attack_target(finished_run, demo_root):
    args = demo_args(demo_root, finished_run, "--num_visualization", "4", "--step_visualization", "1")
    assert run("--mode", "visualization", *args, "--no_adv_test") == 0
    page = (finished_run / "visualization" / "index.html").read_text()
    assert "attack: none" in page and page.count("<td>-</td>") == 4
    assert run("--mode", "visualization", *args, "--attack_target", "normal") == 0
    page = (finished_run / "visualization" / "index.html").read_text()
    assert "on normal images" in page
    rows = [r for r in page.split("<tr class=")[1:]]
    assert all(("<td>-</td>" in r) == r.startswith('"anomalous"') for r in rows)


def test_step_train_zero_is_said_and_zero_eps_is_reported_once(tmp_path, demo_root):
    out = tmp_path / "run"
    assert run("--mode", "all", *demo_args(demo_root, out, "--epochs", "1", "--step_train", "0",
                                           "--epsilon_test", "0", "8", "--step_test", "1", "--num_visualization", "1")) == 0
    log = (out / "log.txt").read_text()
    assert "training attack: none" in log and "PGD(" not in log.split("training attack")[1].splitlines()[0]
    assert "eps 0 or 0 steps leave the images clean" in log
    assert [s["eps_255"] for s in json.loads((out / "metrics.json").read_text())["settings"]] == [0, 8]


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "imagenet", "--class_name", "all"], "invalid choice: 'imagenet'"),
    (["--dsc_heads", "5"], "--dsc_heads 5 does not divide test_vit's width"),
    (["--step_train", "-1"], "--step_train must be >= 0"),
    (["--step_visualization", "-2"], "--step_visualization must be >= 0"),
    (["--top_k", "17"], "--top_k 17 is more than the 16 patches"),
    (["--class_name", "all", "--checkpoint", "x.pth"], "--checkpoint names one class's model"),
])
def test_bad_options_are_one_line_errors(tmp_path, demo_root, capsys, extra, message):
    args = demo_args(demo_root, tmp_path / "o", "--epochs", "1")
    for flag in extra[::2]:  # the later value wins in argparse, but keep the line readable
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    one_line_error(capsys, run("--mode", "train", *args, *extra), message.replace("(", r"\(").replace(")", r"\)"))


def test_nan_scores_are_a_clear_error():
    from utils.errors import UserError
    from utils.metrics import evaluate
    with pytest.raises(UserError, match="1 of 3 image scores are NaN or infinite"):
        evaluate(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))


def test_config_file_keys_are_option_names_and_booleans_are_strict(tmp_path, capsys):
    from config import parse_config
    base = {"dataset": "demo", "class_name": "widget", "dataset_dir": "d"}
    (tmp_path / "c.json").write_text(json.dumps({**base, "no_tqdm": True, "no_reg": "true", "no_adv_train": True,
                                                 "no_adv_test": "True", "hf_path": "vit_tiny_patch16_224",
                                                 "random_start": "false", "bf16": False}))
    cfg = parse_config(["--config", str(tmp_path / "c.json")])
    assert not cfg.tqdm and not cfg.method_options.use_reg and not cfg.train.adv_train and not cfg.eval.adv_test
    assert cfg.method_options.model.backbone == "vit_tiny_patch16_224" and cfg.eval.random_start is False
    assert cfg.precision_reason.startswith("--precision auto")  # a flag's key false: the flag not given
    (tmp_path / "d.json").write_text(json.dumps({**base, "use_reg": False, "random_start": "false"}))
    cfg = parse_config(["--config", str(tmp_path / "d.json")])
    assert not cfg.method_options.use_reg and not cfg.eval.random_start
    (tmp_path / "bad.json").write_text(json.dumps({**base, "random_start": "no"}))
    one_line_error(capsys, run("--config", str(tmp_path / "bad.json")), "'random_start' must be true or false")


def test_any_class_folder_in_mvtec_layout_trains(tmp_path, demo_root):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(demo_root, "widget"), data / "cookie")
    out = tmp_path / "run"
    args = ["--dataset", "mvtec", "--class_name", "cookie", "--dataset_dir", str(data), "--output_dir", str(out),
            *TINY, "--epochs", "1", "--step_train", "1", "--step_test", "1"]
    assert run("--mode", "all", *args, "--num_visualization", "1") == 0
    assert "class 'cookie' is not one of mvtec's own: mvtec layout, default pseudo-anomaly lower bound 14 px" \
        in (out / "log.txt").read_text()
    from datasets.samples import available_classes
    assert available_classes("mvtec", str(data)) == ["cookie"]


def test_folder_dataset_takes_several_abnormal_and_mask_folders(tmp_path, demo_root):
    from datasets.samples import FolderSpec, make_samples
    widget = os.path.join(demo_root, "widget")
    defects = [d for d in sorted(os.listdir(os.path.join(widget, "test"))) if d != "good"][:2]
    spec = FolderSpec(os.path.join(widget, "train", "good"),
                      tuple(os.path.join(widget, "test", d) for d in defects),
                      tuple(os.path.join(widget, "ground_truth", d) for d in defects))
    test = make_samples("folder", "", "mine", "test", folder=spec)
    anomalous = [s for s in test if s.label]
    expected = sum(len(os.listdir(os.path.join(widget, "test", d))) for d in defects)
    assert len(anomalous) == expected and {s.defect for s in anomalous} == set(defects)
    assert all(s.mask and os.path.basename(os.path.dirname(s.mask)) == s.defect for s in anomalous)


def test_truncated_image_is_skipped_and_listed(tmp_path, demo_root):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(demo_root, "widget"), data / "widget")
    good = data / "widget" / "train" / "good"
    whole = sorted(good.iterdir())[0].read_bytes()
    (good / "zz_truncated.png").write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "run"
    assert run("--mode", "train", *demo_args(str(data), out, "--epochs", "1", "--on_corrupt", "skip")) == 0
    assert "skipped 1 unreadable images: " in (out / "log.txt").read_text()
    assert "zz_truncated.png (cannot read image" in (out / "log.txt").read_text()


def test_extraction_keeps_existing_class_folders_unless_replace(tmp_path):
    from utils.download import extract
    (tmp_path / "src" / "bottle").mkdir(parents=True)
    (tmp_path / "src" / "bottle" / "new.png").write_bytes(b"new")
    (tmp_path / "src" / "cable").mkdir()
    with tarfile.open(tmp_path / "a.tar", "w") as t:
        t.add(tmp_path / "src" / "bottle", arcname="bottle")
        t.add(tmp_path / "src" / "cable", arcname="cable")
    target = tmp_path / "data"
    (target / "bottle").mkdir(parents=True)
    (target / "bottle" / "mine.png").write_bytes(b"mine")
    assert extract(str(tmp_path / "a.tar"), str(target)) == ["bottle"]
    assert (target / "bottle" / "mine.png").read_bytes() == b"mine" and not (target / "bottle" / "new.png").exists()
    assert (target / "cable").is_dir()
    assert extract(str(tmp_path / "a.tar"), str(target), replace=True) == []
    assert (target / "bottle" / "new.png").exists() and not (target / "bottle" / "mine.png").exists()
    assert not [p for p in os.listdir(target) if p.startswith(".")]


def test_foreground_download_adds_missing_masks_and_keeps_the_users(tmp_path, monkeypatch):
    import zipfile
    import download_data
    target = tmp_path / "mvtec"
    dest = target / "bottle" / "train" / "foreground_mask"
    dest.mkdir(parents=True)
    (dest / "000.png").write_bytes(b"users own")

    def fake_fetch(file_id, path, *a, **k):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("masks/bottle/000.png", b"official 0")
            z.writestr("masks/bottle/001.png", b"official 1")
        return path
    monkeypatch.setattr(download_data, "gdown_fetch", fake_fetch)
    download_data.download_foreground_masks("mvtec", str(target), ("file", "id"))
    assert (dest / "000.png").read_bytes() == b"users own" and (dest / "001.png").read_bytes() == b"official 1"
    download_data.download_foreground_masks("mvtec", str(target), ("file", "id"), replace=True)
    assert (dest / "000.png").read_bytes() == b"official 0"


def test_single_step_training_switches_to_pgd_when_the_single_step_finds_nothing(tmp_path, demo_root, monkeypatch):
    """The guard fires when PGD-10 gains and the single step does not (here: a single step that returns its
    input): the decision, the switch in the loop, the flag in _last.pth, and a resume that keeps PGD."""
    from attacks.fgsm import FGSMRS
    from attacks.pgd import PGD
    monkeypatch.setattr(FGSMRS, "_run", lambda self, x0, start, labels: (x0.clone(), torch.zeros(len(x0), dtype=bool)))
    used = []
    real_pgd_run = PGD._run

    def counting_pgd(self, *a):
        used.append(self.model_mode)   # training attacks run in train mode, the guard's PGD-10 in eval mode
        return real_pgd_run(self, *a)
    monkeypatch.setattr(PGD, "_run", counting_pgd)
    loop = tmp_path / "loop"
    assert run("--mode", "train", *demo_args(demo_root, loop, "--train_attack", "fgsm_rs", "--co_every", "1",
                                             "--epochs", "2")) == 0
    log = (loop / "log.txt").read_text()
    assert "catastrophic overfitting at epoch 1" in log and "training goes on with PGD-1" in log
    row = (loop / "robustness.csv").read_text().strip().splitlines()[1].split(",")
    assert float(row[2]) == float(row[1]) and float(row[3]) > float(row[1])  # single step: no gain; PGD: a gain
    assert used.count("train") == 4 and used.count("eval") == 1  # epoch 2: 4 PGD steps; one check, then no more
    used.clear()
    out = tmp_path / "run"
    args = demo_args(demo_root, out, "--train_attack", "fgsm_rs", "--co_every", "1")
    assert run("--mode", "train", *args, "--epochs", "1") == 0
    assert used.count("train") == 0                                           # epoch 1 trained with FGSM-RS
    last = torch.load(out / "checkpoints" / "patchguard_demo_widget_last.pth", weights_only=False)
    assert last["switched_to_pgd"] is True
    os.remove(out / "checkpoints" / "patchguard_demo_widget.pth")
    used.clear()
    assert run("--mode", "train", *args, "--epochs", "2", "--resume", "--no_co_guard") == 0
    assert used.count("train") == 4                                           # epoch 2: 4 PGD training steps
    assert "training attack: PGD(eps=8/255, steps=1" in (out / "log.txt").read_text().split("resumed from")[-1]


def test_single_step_training_watches_pgd_and_can_switch(tmp_path, demo_root):
    from config import parse_config
    from engine.train import switch_to_pgd
    out = tmp_path / "run"
    assert run("--mode", "train", *demo_args(demo_root, out, "--epochs", "2", "--train_attack", "nfgsm",
                                           "--co_every", "1")) == 0
    log = (out / "log.txt").read_text()
    assert "training attack: N-FGSM(eps=8/255, noise=16/255, step=8/255" in log
    rows = (out / "robustness.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,clean_loss,single_step_loss,pgd10_loss") and len(rows) == 3
    cfg = parse_config(demo_args(demo_root, out, "--train_attack", "fgsm_rs", "--step_train", "0"))
    assert cfg.train.adv_train and switch_to_pgd(cfg).train.train_attack == "pgd"
    assert switch_to_pgd(cfg).train.step_train == 1


def test_bad_tta_options_are_refused_before_training(tmp_path, demo_root, capsys):
    for option, value, message in (("--tta_lr", "-1", "--tta_lr must be positive"),
                                   ("--tta_steps", "0", "--tta_steps must be >= 1")):
        one_line_error(capsys, run("--mode", "all", "--method", "casa", *demo_args(demo_root, tmp_path / "o"),
                                   option, value), message)
    assert not (tmp_path / "o").exists()


def test_seed_summary_over_a_broken_config_json_is_one_line(tmp_path, capsys):
    for seed in (0, 1):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "metrics.json").write_text(json.dumps({"settings": []}))
        (tmp_path / f"s{seed}" / "config.json").write_text("{not json" if seed else json.dumps({"seed": 0}))
    one_line_error(capsys, run("--mode", "seeds", "--run_dirs", str(tmp_path / "s0"), str(tmp_path / "s1"),
                               "--output_dir", str(tmp_path / "o")), r"cannot read .*s1/config.json")


def test_torchrun_launch_mistakes_are_one_line(tmp_path, demo_root, capsys, monkeypatch):
    """The GPU cases with torch.cuda mocked: no GPU here."""
    base = ["--mode", "train", *demo_args(demo_root, tmp_path / "o")]
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    one_line_error(capsys, run(*base), "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT not: start the job "
                                       "with torchrun")
    for var, value in (("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29599"), ("LOCAL_RANK", "1"),
                       ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    one_line_error(capsys, run(*[a for a in base if a != "cpu" and a != "--device"]),
                   "started 2 processes on this node but it has 1 GPU.*--nproc_per_node 1")
    one_line_error(capsys, run("--mode", "train", "--dataset", "mvtec", "--class_name", "all", "--dataset_dir",
                               demo_root, "--devices", "0", "1"), "--devices starts one process per GPU itself")
    assert not (tmp_path / "o").exists()


def test_seeds_and_foreground_modes_run_on_rank_0_only(tmp_path, demo_root, monkeypatch):
    import utils.distributed
    (tmp_path / "s0").mkdir()
    (tmp_path / "s0" / "metrics.json").write_text(json.dumps({"settings": []}))
    monkeypatch.setattr(utils.distributed, "is_main", lambda: False)
    assert run("--mode", "seeds", "--run_dirs", str(tmp_path / "s0"), "--output_dir", str(tmp_path / "o")) == 0
    assert run("--mode", "foreground", *demo_args(demo_root, tmp_path / "f")) == 0
    assert not (tmp_path / "o" / "seeds.md").exists() and not (tmp_path / "f" / "foreground").exists()


def test_a_second_method_never_replaces_a_finished_runs_record(finished_run, demo_root, capsys):
    assert run("--mode", "test", *demo_args(demo_root, finished_run, "--step_test", "1")) == 0
    before = {name: (finished_run / name).read_bytes() for name in ("config.json", "metrics.json")}
    one_line_error(capsys, run("--mode", "train", "--method", "casa", *demo_args(demo_root, finished_run, "--epochs",
                                                                                  "1")),
                   r"holds the record of a patchguard run \(config.json, metrics.json\).*--overwrite")
    other = finished_run.parent / "other.pth"
    shutil.copy(finished_run / "checkpoints" / "patchguard_demo_widget.pth", other)
    with torch.no_grad():  # a different checkpoint: other weights
        ckpt = torch.load(other, weights_only=False)
        ckpt["model"]["discriminator.output_layer.0.bias"] += 1
        torch.save(ckpt, other)
    one_line_error(capsys, run("--mode", "test", *demo_args(demo_root, finished_run, "--step_test", "1"),
                               "--checkpoint", str(other)), "holds the results of another checkpoint.*--overwrite")
    assert all((finished_run / name).read_bytes() == data for name, data in before.items())
