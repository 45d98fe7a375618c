"""Attention saliency: where a ViT's class token looks, as a (B, N) map over patches.

Used to guide attention-guided cut-and-paste (CaSA): the points to cut and paste are drawn in proportion to it.
"""
from typing import Sequence

import torch

from models.backbone import FeatureExtractor


def cls_attention(fe: FeatureExtractor, images: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """CLS-to-patch attention (B, len(layers), heads, N) of the 0-based blocks `layers`."""
    if fe.num_prefix_tokens == 0:
        raise ValueError("the backbone has no class token: attention saliency needs one")
    p = fe.num_prefix_tokens
    with fe.record_attention(layers, patches_only=False) as maps:
        fe.pretrained_model.forward_features(fe.normalize(images))
    return torch.stack([m[:, :, 0, p:] for m in maps], dim=1)


@torch.no_grad()
def saliency(fe: FeatureExtractor, images: torch.Tensor, layer_reduce: str = "last", head_reduce: str = "mean"
             ) -> torch.Tensor:
    """(B, N) saliency in [0, 1] per image: CLS-to-patch attention of the last block (or the mean over all
    blocks), heads averaged (or their maximum), min-max scaled per image."""
    layers = [fe.depth - 1] if layer_reduce == "last" else list(range(fe.depth))
    att = cls_attention(fe, images, layers).float()          # (B, L, H, N)
    att = att.mean(1)
    att = att.mean(1) if head_reduce == "mean" else att.amax(1)
    lo, hi = att.amin(1, keepdim=True), att.amax(1, keepdim=True)
    return (att - lo) / (hi - lo).clamp_min(1e-12)
