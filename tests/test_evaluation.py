"""Attacks and reports on a small model trained on the demo data."""
import json
import os
import re
import shutil

import pytest
import torch

import main as cli
from attacks import APGD, PGD, patch_margin_loss
from attacks.apgd import checkpoints
from engine.scoring import attack_labels, score_loader
from tests.test_cli import TINY
from methods import get_method, load_model


@pytest.fixture(scope="session")
def trained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    args = ["--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root, "--output_dir", str(out),
            *TINY, "--epochs", "3", "--train_batch_size", "8", "--step_train", "1"]
    assert cli.main(["--mode", "train", *args]) == 0
    _, model, _ = load_model(str(out / "checkpoints" / "patchguard_demo_widget.pth"), get_method("patchguard"))
    return model.eval(), args, out


def demo_batch(trained, demo_root):
    from datasets.dataset import AnomalyDataset
    from datasets.samples import make_samples
    model = trained[0]
    ds = AnomalyDataset(make_samples("demo", demo_root, "widget", "test"), 32, model.patch_size)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    return batch, attack_labels(model, batch)


def test_apgd_checkpoints_follow_autoattack():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_apgd_at_least_as_strong_as_pgd(trained, demo_root):
    model = trained[0]
    batch, labels = demo_batch(trained, demo_root)
    x = batch["image"]
    losses = {}
    for name, attack in {"pgd": PGD(model, 8 / 255, 10), "apgd": APGD(model, 8 / 255, 10)}.items():
        adv = attack(x, labels)
        assert attack.last_report.ok and (adv - x).abs().max() <= 8 / 255 + 1e-6
        with torch.no_grad():
            losses[name] = patch_margin_loss(model(adv), labels)
    assert losses["apgd"].mean() >= losses["pgd"].mean() - 1e-4


@pytest.mark.parametrize("target,attacked_label", [("normal", 0), ("anomalous", 1)])
def test_attack_target_attacks_only_what_it_says(trained, demo_root, target, attacked_label):
    model = trained[0]
    batch, _ = demo_batch(trained, demo_root)
    attack = PGD(model, 8 / 255, 2)
    out = score_loader(get_method("patchguard"), model, [batch], torch.device("cpu"), False, attack, show=False, keep_images=True, target=target)
    changed = (out["images"] - batch["image"]).flatten(1).abs().amax(1) > 0
    assert changed[batch["label"] == attacked_label].all()
    assert not changed[batch["label"] != attacked_label].any()
    assert out["report"].images == int((batch["label"] == attacked_label).sum())


def test_test_mode_sweeps_and_records_everything(trained):
    _, args, out = trained
    assert cli.main(["--mode", "test", *args, "--attack", "pgd", "apgd", "--epsilon_test", "2", "8",
                     "--step_test", "1", "3", "--test_batch_size", "64"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = [(s["attack"], round(s["eps_255"]), s["steps"]) for s in metrics["settings"]]
    assert names[0] == ("none", 0, 0) and len(names) == 1 + 2 * 2 * 2
    for s in metrics["settings"]:
        assert {"image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_f1_max"} <= set(s)
    for s in metrics["settings"][1:]:
        assert s["checks"]["ok"] and s["checks"]["max_abs_delta"] <= s["eps"] + 1e-6
    assert (out / "plots" / "auroc_vs_eps.png").exists() and (out / "plots" / "auroc_vs_steps.png").exists()
    # stronger attacks push robust image AUROC down: more eps never helps the model at a fixed attack and steps
    by = {(s["attack"], s["steps"], round(s["eps_255"])): s["image_auroc"] for s in metrics["settings"][1:]}
    assert all(by[(a, n, 8)] <= by[(a, n, 2)] + 0.02 for a, n, _ in by)


def test_visualization_page_lists_every_image(trained):
    _, args, out = trained
    assert cli.main(["--mode", "visualization", *args, "--num_visualization", "0", "--step_visualization", "1"]) == 0
    page = (out / "visualization" / "index.html").read_text()
    pictures = sorted(p.name for p in (out / "visualization").glob("*.png"))
    assert len(pictures) == 36
    assert sorted(set(re.findall(r'<img src="([^"]+)"', page))) == pictures


def test_visualization_page_loads_every_picture_in_a_headless_browser(trained, tmp_path):
    from tests.test_report import rendered
    _, args, out = trained
    assert cli.main(["--mode", "visualization", *args, "--num_visualization", "4", "--step_visualization", "1"]) == 0
    body = rendered(out / "visualization" / "index.html", tmp_path)
    assert body["images-total"] == 4 and body["images-loaded"] == 4


def test_predict_mode_thresholds_on_normal_training_images(trained, demo_root, tmp_path):
    _, args, out = trained
    new = tmp_path / "new"
    new.mkdir()
    for sub in ("good", "stain"):
        for f in sorted(os.listdir(os.path.join(demo_root, "widget", "test", sub)))[:3]:
            shutil.copy(os.path.join(demo_root, "widget", "test", sub, f), new / f"{sub}_{f}")
    assert cli.main(["--mode", "predict", *args, "--predict_dir", str(new)]) == 0
    result = json.loads((out / "predictions" / "predictions.json").read_text())
    assert result["threshold_from"] == "normal training images" and result["num_threshold_images"] == 60
    assert len(result["predictions"]) == 6
    assert all((out / "predictions" / p["heatmap"]).exists() for p in result["predictions"])
    assert (out / "predictions" / "predictions.csv").read_text().count("\n") == 7
