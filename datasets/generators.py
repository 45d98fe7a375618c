"""Pseudo-anomaly generators by name, each with its options, its argparse group and its per-epoch hook.

A generator is a callable (image (H, W, 3) uint8, guide (H, W) or (gh, gw) or None, rng) -> (image, mask) made per
sample in the DataLoader workers. The per-epoch hook gets the training dataset and an `attention` callable
(images (B, 3, S, S) in [0, 1], layer_reduce, head_reduce) -> (B, N) saliency that the engine builds from the model
through its method: data never imports a model.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from datasets import registry
from datasets.cutpaste import AttentionCutPaste, CutPasteRanges
from datasets.dataset import to_tensor
from datasets.pseudo_anomaly import PseudoAnomalyGenerator
from utils.errors import UserError

Attention = Callable[[torch.Tensor, str, str], torch.Tensor]


@dataclass(frozen=True)
class ForegroundOptions:
    min_patch_size: Optional[int] = None  # None: the class's official lower bound


@dataclass(frozen=True)
class AttentionOptions:
    cutpaste_guidance: str = "attention"  # attention (CaSA), foreground (the mask only) or uniform (no guidance)
    saliency_every: int = 5               # recompute the saliency of every training image every N epochs
    saliency_warmup: int = 5              # epochs of foreground/uniform sampling first (0 with backbone weights)
    saliency_layers: str = "last"         # last block, or mean over blocks
    saliency_heads: str = "mean"          # mean or max over heads
    cutpaste_area: Tuple[float, float] = (0.02, 0.15)
    cutpaste_aspect: Tuple[float, float] = (0.3, 3.3)
    cutpaste_rotation: float = 45.0
    cutpaste_jitter: float = 0.1


class ForegroundAware:
    """PatchGuard's generator: a distorted patch of the object pasted back on the object."""
    name = "foreground"
    options_class = ForegroundOptions

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("foreground-aware pseudo-anomalies (--pseudo_anomaly foreground)")
        g.add_argument("--min_patch_size", type=int,
                       help="pseudo-anomaly lower bound in px (default: official per class)")

    def options(self, a, pretrained: bool) -> ForegroundOptions:
        if a.min_patch_size is not None and a.min_patch_size <= 0:
            raise UserError(f"--min_patch_size must be positive, got {a.min_patch_size}")
        return ForegroundOptions(a.min_patch_size)

    def build(self, options: ForegroundOptions, dataset: str, class_name: str):
        size = options.min_patch_size or registry.min_patch_size(dataset, class_name)
        return PseudoAnomalyGenerator(size), f"foreground-aware, min size {size} px"

    def on_epoch(self, options, epoch: int, train_set, attention: Attention, batch_size: int) -> None:
        return None


class AttentionGuided:
    """CaSA's generator: cut-and-paste where the model's own attention is high (refreshed every few epochs)."""
    name = "attention"
    options_class = AttentionOptions

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("attention-guided cut-and-paste (--pseudo_anomaly attention)")
        g.add_argument("--cutpaste_guidance", choices=("attention", "foreground", "uniform"), default="attention",
                       help="where to cut and paste: the model's attention (CaSA), the foreground mask only, or "
                            "anywhere (the paper's ablation without guidance)")
        g.add_argument("--saliency_every", type=int, default=5, help="recompute the saliency every N epochs")
        g.add_argument("--saliency_warmup", type=int, default=5,
                       help="epochs sampling from the foreground (or uniformly) before the model's attention is used "
                            "(0 when --backbone_weights is given)")
        g.add_argument("--saliency_layers", choices=("last", "mean"), default="last")
        g.add_argument("--saliency_heads", choices=("mean", "max"), default="mean")
        g.add_argument("--cutpaste_area", type=float, nargs=2, default=[0.02, 0.15], help="patch area / image area")
        g.add_argument("--cutpaste_aspect", type=float, nargs=2, default=[0.3, 3.3])
        g.add_argument("--cutpaste_rotation", type=float, default=45.0, help="degrees, U(-r, r)")
        g.add_argument("--cutpaste_jitter", type=float, default=0.1, help="ColorJitter strength")

    def options(self, a, pretrained: bool) -> AttentionOptions:
        for name in ("saliency_every", "saliency_warmup"):
            if getattr(a, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(a, name)}")
        lo, hi = a.cutpaste_area
        if not 0 < lo <= hi < 1:
            raise UserError(f"--cutpaste_area must be two shares 0 < lo <= hi < 1 of the image, got {a.cutpaste_area}")
        if not 0 < a.cutpaste_aspect[0] <= a.cutpaste_aspect[1]:
            raise UserError(f"--cutpaste_aspect must be 0 < lo <= hi, got {a.cutpaste_aspect}")
        return AttentionOptions(a.cutpaste_guidance, a.saliency_every, 0 if pretrained else a.saliency_warmup,
                                a.saliency_layers, a.saliency_heads, tuple(a.cutpaste_area),
                                tuple(a.cutpaste_aspect), a.cutpaste_rotation, a.cutpaste_jitter)

    def build(self, options: AttentionOptions, dataset: str, class_name: str):
        ranges = CutPasteRanges(options.cutpaste_area, options.cutpaste_aspect, options.cutpaste_rotation,
                                options.cutpaste_jitter)
        generator = AttentionCutPaste(ranges, guided=options.cutpaste_guidance != "uniform")
        return generator, f"cut-and-paste guided by {options.cutpaste_guidance} ({ranges})"

    def on_epoch(self, options: AttentionOptions, epoch: int, train_set, attention: Attention,
                 batch_size: int) -> None:
        """Refresh the saliency of every training image after the warm-up, every `saliency_every` epochs."""
        start, every = options.saliency_warmup, max(1, options.saliency_every)
        if options.cutpaste_guidance != "attention" or epoch < start or (epoch - start) % every:
            return
        maps = []
        for i in range(0, len(train_set), batch_size):
            images = torch.stack([to_tensor(im) for im in train_set.images[i:i + batch_size]])
            maps.append(attention(images, options.saliency_layers, options.saliency_heads).float().cpu())
        grid = train_set.image_size // train_set.patch_size
        train_set.set_saliency(torch.cat(maps).reshape(len(train_set), grid, grid).numpy())


GENERATORS = {g.name: g for g in (ForegroundAware(), AttentionGuided())}


def get_generator(name: str):
    if name not in GENERATORS:
        raise UserError(f"unknown pseudo-anomaly generator '{name}': expected one of {', '.join(GENERATORS)}")
    return GENERATORS[name]
