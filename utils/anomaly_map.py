"""Patch logits -> pixel anomaly maps (official: bilinear upsampling, then scipy Gaussian sigma 6 radius 7)."""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def anomaly_maps(logits: torch.Tensor, grid_size, out_size, sigma: float = 6.0, radius: int = 7) -> np.ndarray:
    """(B, N) logits -> (B, H, W) float32 maps, smoothed per image (no smoothing across the batch axis)."""
    b = logits.shape[0]
    maps = logits.detach().float().reshape(b, 1, *grid_size)
    maps = F.interpolate(maps, size=tuple(out_size), mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
    if sigma > 0:
        maps = gaussian_filter(maps, sigma=sigma, radius=radius, axes=(1, 2))
    return maps.astype(np.float32)
