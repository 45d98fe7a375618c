"""PatchGuard loss: per-patch BCE plus a KL regulariser that pushes attention towards uniform."""
import math
from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_REG_WEIGHTS = (0.005, 0.01, 0.05)  # official, for layers 6, 9, 12


def attention_kl(attn: torch.Tensor) -> torch.Tensor:
    """KL(uniform || A) as official F.kl_div(log(A + 1e-8), 1/N, reduction='mean'): mean over all elements."""
    u = 1.0 / attn.shape[-1]
    return (u * (math.log(u) - torch.log(attn + 1e-8))).mean()


def patchguard_loss(logits: torch.Tensor, patch_labels: torch.Tensor, attn_maps: Sequence[torch.Tensor] = (),
                    reg_weights: Sequence[float] = DEFAULT_REG_WEIGHTS) -> torch.Tensor:
    """One official loss call: mean over images of the summed per-patch BCE, plus sum_l w_l * KL_l.

    Args:
        logits: (B, N) patch logits. patch_labels: (B, N) in {0, 1}.
        attn_maps: per reg layer (B, heads, N, N); empty disables the regulariser.
    """
    bce = F.binary_cross_entropy_with_logits(logits, patch_labels.to(logits.dtype), reduction="none")
    loss = bce.sum(dim=1).mean()
    if attn_maps:
        if len(attn_maps) != len(reg_weights):
            raise ValueError(f"{len(attn_maps)} attention maps but {len(reg_weights)} regulariser weights")
        for w, a in zip(reg_weights, attn_maps):
            loss = loss + w * attention_kl(a.float())
    return loss
