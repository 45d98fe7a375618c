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


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's 1-D kernel: exp(-x^2 / (2 sigma^2)) on -radius..radius, summing to 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def reflect_indices(size: int, radius: int) -> torch.Tensor:
    """Source index of each position of a line padded by `radius` as scipy's mode "reflect" does (the edge pixel is
    repeated: d c b a | a b c d | d c b a), for any radius."""
    i = np.arange(-radius, size + radius) % (2 * size)
    return torch.from_numpy(np.where(i >= size, 2 * size - 1 - i, i))


class SmoothedMaps(torch.nn.Module):
    """Patch logits (B, N) -> smoothed pixel maps (B, H, W) in torch (for export): the same bilinear upsampling
    and scipy-equivalent Gaussian (mode "reflect") as `anomaly_maps`, as index gathers and two 1-D convolutions."""

    def __init__(self, grid_size, out_size, sigma: float, radius: int):
        super().__init__()
        self.grid_size, self.out_size = tuple(grid_size), tuple(int(s) for s in out_size)
        self.smooth = sigma > 0
        if self.smooth:
            k = torch.from_numpy(gaussian_kernel(sigma, radius)).float()
            self.register_buffer("kernel_x", k.view(1, 1, 1, -1), persistent=False)
            self.register_buffer("kernel_y", k.view(1, 1, -1, 1), persistent=False)
            self.register_buffer("rows", reflect_indices(self.out_size[0], radius), persistent=False)
            self.register_buffer("cols", reflect_indices(self.out_size[1], radius), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        maps = logits.float().reshape(-1, 1, *self.grid_size)
        maps = F.interpolate(maps, size=self.out_size, mode="bilinear", align_corners=False)
        if self.smooth:
            maps = F.conv2d(maps.index_select(3, self.cols), self.kernel_x)
            maps = F.conv2d(maps.index_select(2, self.rows), self.kernel_y)
        return maps[:, 0]
