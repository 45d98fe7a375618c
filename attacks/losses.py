"""Per-image attack objectives on patch logits; attacks ascend them."""
import torch


def patch_margin_loss(logits: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Official label-aware loss per image: mean logit of normal patches - mean logit of anomalous patches.

    Ascending it makes normal patches look anomalous and anomalous ones look normal. An empty group
    contributes 0. Returns (B,).
    """
    anomalous = patch_labels.to(logits.dtype)
    normal = 1.0 - anomalous
    normal_mean = (logits * normal).sum(1) / normal.sum(1).clamp_min(1.0)
    anomalous_mean = (logits * anomalous).sum(1) / anomalous.sum(1).clamp_min(1.0)
    return normal_mean - anomalous_mean
