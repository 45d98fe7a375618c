import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FIXTURE = os.path.join(SHARED, "fixtures", "official_patchguard")
MPDD = os.path.join(SHARED, "data", "mpdd")
HEADCT = os.path.join(SHARED, "data", "headct")

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_model_config(**overrides):
    from models.patchguard import PatchGuardConfig
    cfg = dict(backbone="vit_tiny_patch16_224", image_size=32, patch_size=8, hidden_dim=64)
    cfg.update(overrides)
    return PatchGuardConfig(**cfg)


@pytest.fixture
def tiny_model():
    from models.patchguard import PatchGuard
    torch.manual_seed(0)
    return PatchGuard(tiny_model_config()).eval()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from datasets.demo import build_demo
    root = tmp_path_factory.mktemp("demo")
    build_demo(str(root))
    return str(root)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Estimated foreground masks go to a temporary cache, never to the user's."""
    monkeypatch.setenv("PATCHGUARD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
