"""Proof of the seam: a third method, written here and nowhere else, trains, tests (clean and attacked) and draws
through the engine and the CLI."""
import json
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import main as cli
from attacks import patch_margin_loss
from methods import METHODS, Method, Outputs


@dataclass(frozen=True)
class PatchClassifierConfig:
    image_size: int = 32
    patch_size: int = 8
    width: int = 8
    top_k: int = 3
    smoothing_sigma: float = 2.0
    smoothing_radius: int = 3


@dataclass(frozen=True)
class PatchClassifierOptions:
    model: PatchClassifierConfig = field(default_factory=PatchClassifierConfig)


class PatchClassifier(nn.Module):
    """One linear layer per patch: logits (B, N)."""

    def __init__(self, cfg: PatchClassifierConfig):
        super().__init__()
        self.cfg, self.patch_size = cfg, cfg.patch_size
        self.grid_size = (cfg.image_size // cfg.patch_size,) * 2
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size)
        self.head = nn.Linear(cfg.width, 1)

    def forward(self, images):
        return self.head(torch.relu(self.embed(images).flatten(2).transpose(1, 2)))[..., 0]


class PatchClassifierMethod(Method):
    name = "patch_classifier"
    options_class = PatchClassifierOptions
    model_options_class = PatchClassifierConfig
    adv_train_default = False

    def add_arguments(self, parser):
        parser.add_argument_group("patch classifier").add_argument("--pc_width", type=int, default=8)

    def options(self, a):
        return PatchClassifierOptions(PatchClassifierConfig(a.image_size, a.patch_size or 8, a.pc_width))

    def build_model(self, model_options, backbone_weights=None):
        return PatchClassifier(model_options)

    def train_step(self, model, batch, optimizer, cfg, device):
        images = torch.cat([batch["image"], batch["pseudo"]]).to(device)
        labels = torch.cat([torch.zeros_like(batch["patch_labels"]), batch["patch_labels"]]).to(device)
        model.train()
        loss = F.binary_cross_entropy_with_logits(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    attack_loss = staticmethod(patch_margin_loss)

    def read_out(self, model, outputs):
        return Outputs(outputs.topk(model.cfg.top_k, dim=1).values.mean(1), outputs)


def test_a_third_method_runs_train_test_and_pictures_through_the_engine(tmp_path, demo_root, monkeypatch):
    monkeypatch.setitem(METHODS, "patch_classifier", PatchClassifierMethod())
    out = tmp_path / "run"
    args = ["--method", "patch_classifier", "--pc_width", "4", "--dataset", "demo", "--class_name", "widget",
            "--dataset_dir", demo_root, "--output_dir", str(out), "--image_size", "32", "--patch_size", "8",
            "--device", "cpu", "--precision", "fp32", "--num_workers", "0", "--no_tqdm", "--epochs", "2",
            "--train_batch_size", "16", "--epsilon_test", "8", "--step_test", "2", "--num_visualization", "3", "--step_visualization", "1"]
    assert cli.main(["--mode", "train", *args]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "patch_classifier" and config["method_options"]["model"]["width"] == 4
    assert cli.main(["--mode", "test", *args]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert [(s["attack"], s["tta"]) for s in settings] == [("none", False), ("pgd", False)]
    assert settings[1]["checks"]["ok"] and "patch_margin_loss" in settings[1]["repr"]
    assert settings[1]["image_auroc"] < settings[0]["image_auroc"]  # the attack on its objective bites
    assert cli.main(["--mode", "test", *args, "--no_adv_test", "--output_dir", str(tmp_path / "clean"),
                     "--checkpoint", str(out / "checkpoints" / "patch_classifier_demo_widget.pth")]) == 0
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())["settings"]
    assert len(clean) == 1 and clean[0]["image_auroc"] == settings[0]["image_auroc"]
    assert cli.main(["--mode", "visualization", *args]) == 0
    assert len(list((out / "visualization").glob("*.png"))) == 3


def test_a_checkpoint_of_another_method_is_refused_in_one_line(tmp_path, demo_root, capsys):
    import os

    from tests.conftest import FIXTURE
    from tests.test_cli import one_line_error
    from tests.test_legacy import LEGACY
    base = ["--mode", "test", "--dataset", "demo", "--class_name", "widget", "--dataset_dir", demo_root,
            "--output_dir", str(tmp_path), "--device", "cpu", "--no_adv_test", "--no_tqdm"]
    one_line_error(capsys, cli.main([*base, "--checkpoint", os.path.join(LEGACY, "casa.pth")]),
                   "holds a casa model but the run asks for --method patchguard; pass --method casa")
    if os.path.isdir(FIXTURE):
        one_line_error(capsys, cli.main([*base, "--method", "casa", "--checkpoint",
                                         os.path.join(FIXTURE, "patchguard_tiny.pth")]),
                       "is a patchguard state dict but the run asks for --method casa; pass --method patchguard")
    assert not (tmp_path / "metrics.json").exists()
