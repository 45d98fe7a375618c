"""CaSA training loss: image classification of normal vs synthetic anomaly, plus segmentation of the synthetic
patch by the attention map.

Image: L = 1/(2|X|) sum_x [CE(g(f(x)), 0) + CE(g(f(Att(x))), 1)] (two-class CE on one logit = BCE).
Map: focal + Dice (or BCE + Dice, or BCE) of the patch map against the synthetic patch labels, on both copies.
The segmentation loss and its weight are our choice (the paper's exact form is not available here).
"""
import torch
import torch.nn.functional as F

from attacks.losses import patch_margin_loss


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return (ce * (1 - p_t) ** gamma).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * targets).sum(1)
    return (1 - (2 * inter + smooth) / (p.sum(1) + targets.sum(1) + smooth)).mean()


def segmentation_loss(map_logits: torch.Tensor, patch_labels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(map_logits, patch_labels)
    first = focal_loss(map_logits, patch_labels) if kind == "focal_dice" else \
        F.binary_cross_entropy_with_logits(map_logits, patch_labels)
    return first + dice_loss(map_logits, patch_labels)


def casa_loss(outputs: torch.Tensor, image_labels: torch.Tensor, patch_labels: torch.Tensor,
              seg_kind: str = "focal_dice", seg_weight: float = 1.0) -> torch.Tensor:
    """outputs (B, 1 + N) from CaSA, image_labels (B,) 0/1, patch_labels (B, N)."""
    image = F.binary_cross_entropy_with_logits(outputs[:, 0], image_labels.to(outputs.dtype))
    if seg_weight == 0:
        return image
    return image + seg_weight * segmentation_loss(outputs[:, 1:], patch_labels.to(outputs.dtype), seg_kind)


def casa_image_attack_loss(outputs: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Per-image objective on the image logit: raise it for normal images, lower it for anomalous ones (an image is
    anomalous when any patch is)."""
    anomalous = (patch_labels.amax(1) > 0).to(outputs.dtype)
    return (1 - 2 * anomalous) * outputs[:, 0]


def casa_map_attack_loss(outputs: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Per-image objective on the map: PatchGuard's patch margin of the map logits."""
    return patch_margin_loss(outputs[:, 1:], patch_labels)


def casa_attack_loss(outputs: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """The joint objective attacks ascend by default: image and map objectives summed. The image logit is
    unbounded and tends to dominate, leaving the map barely attacked: see --attack_objective."""
    return casa_image_attack_loss(outputs, patch_labels) + casa_map_attack_loss(outputs, patch_labels)


ATTACK_OBJECTIVES = {"joint": casa_attack_loss, "image": casa_image_attack_loss, "map": casa_map_attack_loss}
