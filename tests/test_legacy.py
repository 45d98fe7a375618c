"""Behaviour kept across the method contract (issue 17): checkpoints, config.json files and metrics made by the
code before it (tests/fixtures/legacy, see its README) load, score and reproduce identically."""
import json
import os

import pytest
import torch

import main as cli
from config import parse_config
from methods import get_method, load_model
from tests.test_cli import TINY

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "legacy")


@pytest.mark.parametrize("name", ["patchguard", "casa"])
def test_old_checkpoints_load_and_score_identically(name):
    expected = torch.load(os.path.join(LEGACY, f"{name}_outputs.pt"))
    method, model, run_config = load_model(os.path.join(LEGACY, f"{name}.pth"), get_method(name))
    assert run_config["method"] == name
    with torch.no_grad():
        out = method.score(model.eval(), expected["inputs"])
    torch.testing.assert_close(out.image_scores, expected["scores"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.patch_map, expected["patch_map"], rtol=0, atol=1e-6)


def test_functional_tta_matches_the_old_in_place_adam_steps(demo_root):
    """Two Adam steps on one batch, from the trained weights: the old in-place adapter's outputs."""
    expected = torch.load(os.path.join(LEGACY, "casa_outputs.pt"))
    method, model, _ = load_model(os.path.join(LEGACY, "casa.pth"), get_method("casa"))
    cfg = parse_config(["--method", "casa", "--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root,
                        "--tta_steps", "2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = method.score(model.eval(), expected["inputs"], method.adapter(model, cfg))
    torch.testing.assert_close(out.image_scores, expected["tta_scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.patch_map, expected["tta_patch_map"], rtol=0, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is untouched


@pytest.mark.parametrize("name", ["patchguard", "casa"])
def test_old_config_json_repeats_the_run(name):
    cfg = parse_config(["--config", os.path.join(LEGACY, f"{name}_config.json"), "--mode", "test"])
    method, model, _ = load_model(os.path.join(LEGACY, f"{name}.pth"), get_method(name))
    assert cfg.method == name and method.build_model(cfg.method_options.model).cfg == model.cfg
    old = json.load(open(os.path.join(LEGACY, f"{name}_config.json")))
    assert cfg.train.epochs == old["train"]["epochs"] and cfg.seed == old["seed"]
    assert old["bf16"] is False and cfg.precision == "fp32"  # what that run ran, not today's default (auto)
    if name == "casa":
        assert cfg.method_options.tta_lr == old["casa"]["tta_lr"]
        assert cfg.data.generator.saliency_warmup == old["data"]["saliency_warmup"]
    else:
        assert cfg.method_options.reg_weights == tuple(old["train"]["reg_weights"])


@pytest.mark.parametrize("name,extra", [("patchguard", ["--step_train", "1"]),
                                        ("casa", ["--saliency_warmup", "0", "--casa_head_hidden", "16"])])
def test_same_seed_same_metrics_as_before(tmp_path, demo_root, name, extra):
    """The fixture's run again: every row of the old metrics.json is reproduced, except CaSA's rows the old code
    scored after a TTA row had left adapted weights behind (the leak this contract fixed)."""
    args = ["--mode", "all", "--method", name, "--dataset", "demo", "--class_name", "widget",
            "--dataset_dir", demo_root, "--output_dir", str(tmp_path), *TINY, "--epochs", "1",
            "--train_batch_size", "8", "--test_batch_size", "16", "--epsilon_test", "8", "--step_test", "2",
            "--num_visualization", "1", "--step_visualization", "1", *extra]
    assert cli.main(args) == 0
    old = json.load(open(os.path.join(LEGACY, f"{name}_metrics.json")))["settings"]
    new = json.load(open(tmp_path / "metrics.json"))["settings"]
    new = {(s["attack"], s["tta"], s.get("attacker") or "unaware" if s["tta"] and s["attack"] != "none" else None): s
           for s in new}
    leaky_before = name == "casa"
    compared = 0
    for s in old:
        if leaky_before and s["attack"] != "none":
            continue
        row = new[(s["attack"], s["tta"], "unaware" if s["tta"] and s["attack"] != "none" else None)]
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            assert row[metric] == pytest.approx(s[metric], abs=1e-6), (s["attack"], s["tta"], metric)
        compared += 1
    assert compared == (2 if leaky_before else len(old))
