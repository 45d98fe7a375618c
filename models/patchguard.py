"""PatchGuard: ViT patch features -> transformer discriminator -> one anomaly logit per patch."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from models.backbone import FeatureExtractor
from models.discriminator import Discriminator
from utils.errors import UserError
from utils.readout import check_readout


@dataclass(frozen=True)
class PatchGuardConfig:
    backbone: str = "vit_small_patch14_dinov2"
    image_size: int = 224
    patch_size: Optional[int] = None  # None: the backbone's own
    feature_layers: Tuple[int, ...] = (12,)
    reg_layers: Tuple[int, ...] = (6, 9, 12)
    hidden_dim: int = 2048
    dsc_layers: int = 1
    dsc_heads: int = 4
    dsc_dropout: float = 0.2
    top_k: int = 3
    smoothing_sigma: float = 6.0
    smoothing_radius: int = 7


class PatchGuard(nn.Module):
    """forward(images in [0, 1], (B, 3, H, W)) -> patch logits (B, N). Higher = more anomalous."""

    def __init__(self, cfg: PatchGuardConfig, backbone_weights: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FeatureExtractor(
            cfg.backbone, cfg.image_size, cfg.feature_layers, cfg.reg_layers, cfg.patch_size, backbone_weights
        )
        fe = self.feature_extractor
        self.num_patches, self.patch_size, self.grid_size = fe.num_patches, fe.patch_size, fe.grid_size
        if fe.embed_dim % cfg.dsc_heads:
            raise UserError(f"--dsc_heads {cfg.dsc_heads} does not divide {cfg.backbone}'s width {fe.embed_dim}; "
                            f"use a divisor such as 4 (official), 2 or 1")
        check_readout(cfg.top_k, self.num_patches, cfg.image_size)
        self.discriminator = Discriminator(
            fe.embed_dim, cfg.hidden_dim, fe.num_patches, cfg.dsc_layers, cfg.dsc_heads, cfg.dsc_dropout
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.discriminator(self.feature_extractor(images))

    def forward_with_attention(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Patch logits plus the reg layers' patch-to-patch attention maps, each (B, heads, N, N)."""
        with self.feature_extractor.record_attention() as maps:
            logits = self(images)
        return logits, list(maps)

    @staticmethod
    def patch_map(logits: torch.Tensor) -> torch.Tensor:
        """Per-patch anomaly logits (B, N): the outputs themselves."""
        return logits

    def image_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Image score = mean of the top-k patch logits (official)."""
        return logits.topk(min(self.cfg.top_k, logits.shape[1]), dim=1).values.mean(dim=1)
