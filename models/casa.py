"""CaSA (Bozorgtabar et al., BMVC 2022): ViT encoder, MLP head on the class token (image logit), and a
localization map made of learnable non-negative weights over the (layer, head) CLS-to-patch attention maps.

forward(images in [0, 1]) -> (B, 1 + N): column 0 the image logit (higher = anomalous), then one map logit per
patch. The attention-entropy statistics of the training data (stage II) live in buffers, so they travel with
the checkpoint.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbone import FeatureExtractor
from utils.errors import UserError
from utils.readout import check_readout


@dataclass(frozen=True)
class CaSAConfig:
    backbone: str = "vit_small_patch14_dinov2"
    image_size: int = 224
    patch_size: Optional[int] = None
    map_layers: Tuple[int, ...] = ()           # 1-based blocks whose CLS attention makes the map; () = last three
    head_hidden: int = 512
    score: str = "head"                         # head, or head+map: image logit + mean of the top-k map logits
    top_k: int = 3
    smoothing_sigma: float = 4.0
    smoothing_radius: int = 7


def attention_entropy(maps) -> torch.Tensor:
    """Mean over query tokens of each attention row's entropy: list of (B, H, T, T) -> (B, L, H)."""
    return torch.stack([-(m * torch.log(m.clamp_min(1e-12))).sum(-1).mean(-1) for m in maps], dim=1)


class CaSA(nn.Module):
    def __init__(self, cfg: CaSAConfig, backbone_weights: Optional[str] = None):
        super().__init__()
        self.feature_extractor = FeatureExtractor(cfg.backbone, cfg.image_size, [1], [1], cfg.patch_size,
                                                  backbone_weights)
        fe = self.feature_extractor
        layers = cfg.map_layers or tuple(range(max(1, fe.depth - 2), fe.depth + 1))
        if not all(1 <= layer <= fe.depth for layer in layers):
            raise UserError(f"--casa_map_layers {list(layers)} out of range for {cfg.backbone}: expected 1..{fe.depth}")
        self.cfg = cfg = dataclasses.replace(cfg, map_layers=tuple(layers))
        if fe.num_prefix_tokens == 0:
            raise UserError(f"CaSA needs a backbone with a class token; {cfg.backbone} has none")
        self.num_patches, self.patch_size, self.grid_size = fe.num_patches, fe.patch_size, fe.grid_size
        width = fe.pretrained_model.embed_dim
        heads = fe.pretrained_model.blocks[0].attn.num_heads
        self.head = nn.Sequential(nn.Linear(width, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))
        # softplus(raw) >= 0: one weight per (map layer, head); start at an even mix
        self.map_weights_raw = nn.Parameter(torch.zeros(len(cfg.map_layers), heads))
        self.map_bias = nn.Parameter(torch.zeros(()))
        depth = fe.depth
        # stage II statistics: [normal, synthetic anomaly] x every block x head
        self.register_buffer("entropy_mean", torch.zeros(2, depth, heads))
        self.register_buffer("entropy_var", torch.ones(2, depth, heads))
        self.register_buffer("has_statistics", torch.zeros((), dtype=torch.bool))
        check_readout(cfg.top_k, self.num_patches, cfg.image_size)

    @property
    def map_weights(self) -> torch.Tensor:
        return F.softplus(self.map_weights_raw)

    def features_and_attention(self, images: torch.Tensor, all_blocks: bool = False):
        """Class-token features (B, D) before the head, CLS-to-patch maps (B, L, H, N) of the map layers and,
        with `all_blocks`, every block's full attention maps (for the entropy statistics)."""
        fe = self.feature_extractor
        map_idx = [layer - 1 for layer in self.cfg.map_layers]
        idx = list(range(fe.depth)) if all_blocks else map_idx
        p = fe.num_prefix_tokens
        with fe.record_attention(idx, patches_only=False) as maps:
            tokens = fe.pretrained_model.forward_features(fe.normalize(images))
        cls_maps = torch.stack([maps[idx.index(i)][:, :, 0, p:] for i in map_idx], dim=1)
        return tokens[:, 0], cls_maps, (maps if all_blocks else None)

    def outputs(self, features: torch.Tensor, cls_maps: torch.Tensor) -> torch.Tensor:
        image_logit = self.head(features)                                    # (B, 1)
        weighted = (cls_maps * self.num_patches * self.map_weights[None, :, :, None]).sum((1, 2))
        return torch.cat([image_logit, weighted + self.map_bias], dim=1)     # (B, 1 + N)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, cls_maps, _ = self.features_and_attention(images)
        return self.outputs(features, cls_maps)

    def forward_with_entropy(self, images: torch.Tensor):
        """Outputs and the attention entropy (B, blocks, heads) of the same forward."""
        features, cls_maps, maps = self.features_and_attention(images, all_blocks=True)
        return self.outputs(features, cls_maps), attention_entropy(maps)

    def image_scores(self, outputs: torch.Tensor) -> torch.Tensor:
        score = outputs[:, 0]
        if self.cfg.score == "head+map":
            score = score + self.patch_map(outputs).topk(self.cfg.top_k, dim=1).values.mean(1)
        return score

    @staticmethod
    def patch_map(outputs: torch.Tensor) -> torch.Tensor:
        return outputs[:, 1:]

