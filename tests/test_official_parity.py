"""Our model, loss, maps, scores and PGD reproduce the official code's outputs on its own tiny checkpoint."""
import os

import numpy as np
import pytest
import torch

from attacks import PGD
from losses.patchguard_loss import patchguard_loss
from models.patchguard import PatchGuardConfig
from tests.conftest import FIXTURE
from utils.anomaly_map import anomaly_maps
from methods import get_method, load_model

pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason="official fixture not present")


@pytest.fixture(scope="module")
def official():
    inputs = torch.load(os.path.join(FIXTURE, "inputs.pt"))
    expected = torch.load(os.path.join(FIXTURE, "expected.pt"))
    _, model, run_config = load_model(os.path.join(FIXTURE, "patchguard_tiny.pth"), get_method("patchguard"),
                                      PatchGuardConfig(backbone="vit_tiny_patch16_224", image_size=64))
    assert run_config is None  # official format: architecture from the command line
    return model.eval(), inputs, expected


def test_patch_logits_and_scores(official):
    model, inputs, expected = official
    with torch.no_grad():
        logits = model(inputs["images"])
    torch.testing.assert_close(logits, expected["patch_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.image_scores(logits), expected["image_scores"], atol=1e-5, rtol=1e-5)


def test_eval_mode_loss(official):
    model, inputs, expected = official
    with torch.no_grad():
        logits, maps = model.forward_with_attention(inputs["images"])
    loss = patchguard_loss(logits, inputs["patch_labels"], maps)
    torch.testing.assert_close(loss, expected["loss_eval_mode"], atol=1e-4, rtol=1e-6)


def test_anomaly_maps(official):
    model, inputs, expected = official
    with torch.no_grad():
        logits = model(inputs["images"])
    maps = anomaly_maps(logits, model.grid_size, inputs["masks"].shape[-2:])
    np.testing.assert_allclose(maps, expected["anomaly_maps"].numpy(), atol=1e-5, rtol=1e-5)


def test_pgd5_matches(official):
    model, inputs, expected = official
    attack = PGD(model, eps=8 / 255, steps=5)
    adv = attack(inputs["images"], inputs["patch_labels"])
    torch.testing.assert_close(adv, expected["pgd_eps8_steps5_images"], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(adv), expected["pgd_patch_logits"], atol=1e-5, rtol=1e-5)


def test_our_checkpoint_roundtrip(official, tmp_path):
    from utils.checkpoint import save_checkpoint
    model, inputs, _ = official
    path = str(tmp_path / "ours.pth")
    save_checkpoint(path, model, {"method": "patchguard", "method_options": {"model": model.cfg.__dict__}})
    # the fallback is ignored: the config comes from the file
    _, again, cfg = load_model(path, get_method("patchguard"), PatchGuardConfig())
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(inputs["images"]), model(inputs["images"]))
