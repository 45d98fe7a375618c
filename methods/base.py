"""The method contract: everything that differs between methods, behind one small base class.

The engine (train, test, pictures, predict) calls these and nothing else method-specific; it never asks which
method it has. A method owns its option dataclass and argparse group, builds its model, takes a training step,
names the objective test attacks ascend, reads raw outputs out as `Outputs`, and may add an after-training step,
a test-time adapter and extra pictures. A new method is a subclass in its own file here (plus its model in
models/ and its loss in losses/), registered with `methods.register`.

What the engine expects of a model `build_model` returns: an nn.Module whose forward(images in [0, 1], (B, 3, S, S))
returns one tensor (B, ...); attributes `cfg` (a frozen dataclass with `image_size` and the read-out options
`top_k`, `smoothing_sigma`, `smoothing_radius`), `patch_size`, `grid_size` (gh, gw) and `num_patches`.
"""
import argparse
from dataclasses import dataclass
from typing import List, Optional, Protocol, Tuple

import torch
import torch.nn as nn

from utils.errors import UserError


@dataclass(frozen=True)
class Outputs:
    """What every method's raw outputs read out to."""
    image_scores: torch.Tensor            # (B,), higher = more anomalous
    patch_map: torch.Tensor               # (B, N) per-patch anomaly logits, upsampled and smoothed into maps
    features: Optional[torch.Tensor] = None  # (B, D) image features for the method's extra pictures, if any


class Adapter(Protocol):
    """Test-time adaptation that never changes the model: `__call__(images)` returns the raw outputs of the model
    adapted on these images (labels are never seen). `differentiable=True` keeps the adaptation in the autograd
    graph (for an attacker that attacks through it); `update=False` leaves an online adapter's state as it was.
    `reset()` starts a new test setting from the trained weights. `attackers`: the attacked rows it is reported
    with ("unaware": the attack sees the trained model; "adaptive": it attacks through the adaptation)."""
    attackers: Tuple[str, ...]

    def __call__(self, images: torch.Tensor, differentiable: bool = False, update: bool = True) -> torch.Tensor: ...

    def reset(self) -> None: ...


class Method:
    name: str = ""
    options_class: type = type(None)        # frozen dataclass; its `model` field is the model's own config
    model_options_class: type = type(None)  # that config's class (checkpoints store it as a plain dict)
    adv_train_default: bool = True          # adversarial training unless --no_adv_train / --adv_train says
    generator_default: str = "foreground"   # pseudo-anomaly generator unless --pseudo_anomaly says
    compilable: bool = True                 # False: --compile runs this method eagerly, for `eager_reason`
    eager_reason: str = ""

    # options
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """This method's own argparse group (shared model options live in config.py)."""

    def options(self, args: argparse.Namespace):
        """The method's options from the parsed command line; bad values raise UserError before anything runs."""
        raise NotImplementedError

    # model
    def build_model(self, model_options, backbone_weights: Optional[str] = None) -> nn.Module:
        raise NotImplementedError

    def recognises(self, state_dict: dict) -> bool:
        """True for a foreign state dict (e.g. an official release) this method can load with the run's options."""
        return False

    # training
    def train_step(self, model: nn.Module, batch: dict, optimizer, cfg, device) -> float:
        """One optimiser step on a batch (image, pseudo, patch_labels, ...); returns the loss."""
        raise NotImplementedError

    def attack_loss(self, outputs: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
        """Per-image objective (B,) that attacks ascend, from raw outputs and patch labels (B, N)."""
        raise NotImplementedError

    def attack_objectives(self, cfg) -> dict:
        """{name: per-image loss} that test attacks ascend, one row each; {None: attack_loss} unless the method
        offers several (the engine then adds a row with each metric's minimum over them)."""
        return {None: self.attack_loss}

    def after_training(self, model: nn.Module, batches, cfg, device) -> None:
        """Runs once after the last epoch, over a loader of training batches with fresh pseudo-anomalies."""

    def saliency(self, model: nn.Module, images: torch.Tensor, layer_reduce: str, head_reduce: str) -> torch.Tensor:
        """(B, N) attention saliency in [0, 1] for the attention-guided generator."""
        raise UserError(f"method {self.name} has no attention saliency: use another --pseudo_anomaly")

    # test
    def read_out(self, model: nn.Module, outputs: torch.Tensor) -> Outputs:
        raise NotImplementedError

    def score(self, model: nn.Module, images: torch.Tensor, adapter: Optional[Adapter] = None) -> Outputs:
        """Read-out of the model (or of the model adapted on these images) for a batch."""
        return self.read_out(model, (model(images) if adapter is None else adapter(images)).float())

    def adapter(self, model: nn.Module, cfg) -> Optional[Adapter]:
        """The test-time adapter, or None: test settings are then reported without adaptation only."""
        return None

    def extra_pictures(self, predictions: dict, out_dir: str, seed: int) -> List[str]:
        """Pictures beyond the heatmaps from the clean test predictions (scores, labels, features, ...)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class ViTSaliency:
    """Mixin for methods whose model holds its ViT as `feature_extractor`: the class token's attention as saliency."""

    def saliency(self, model: nn.Module, images: torch.Tensor, layer_reduce: str, head_reduce: str) -> torch.Tensor:
        from models.saliency import saliency
        return saliency(model.feature_extractor, images, layer_reduce, head_reduce)
