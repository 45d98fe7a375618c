"""--mode foreground: look at and measure the foreground masks a run would use.

Writes <output_dir>/foreground/grid.png (training images with their masks outlined) and, when the test set has
pixel masks, measures the estimated foreground of each anomalous test image against its defect pixels.
"""
import os

import numpy as np

from config import RunConfig
from datasets.assembly import samples, whole_image_foreground, with_estimated_foreground
from datasets.foreground import coverage, estimate_foreground
from datasets.images import load_image, load_mask
from engine.common import log
from utils.figures import pyplot, save_figure
from utils.io import write_json

GRID_SIZE = 160


def save_grid(path: str, images, masks, columns: int = 6) -> None:
    plt = pyplot()
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, mask in zip(axes.ravel(), images, masks):
        ax.imshow(image)
        ax.imshow(np.ma.masked_where(mask, np.ones_like(mask, dtype=float)), cmap="gray", alpha=0.55, vmin=0, vmax=1)
        ax.contour(mask, levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"{mask.mean():.0%} of image", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def run_foreground_report(cfg: RunConfig) -> dict:
    out_dir = os.path.join(cfg.output_dir, "foreground")
    train = samples(cfg, "train")
    if whole_image_foreground(cfg):
        log.info("%s/%s uses the whole image as foreground", cfg.data.dataset, cfg.data.class_name)
    else:
        train = with_estimated_foreground(train, cfg.data.cache_dir, cfg.data.on_corrupt == "skip")
    shown = train[:: max(1, len(train) // 18)][:18]
    images = [load_image(s.image, GRID_SIZE) for s in shown]
    masks = [load_mask(s.foreground, GRID_SIZE) if s.foreground and not whole_image_foreground(cfg)
             else np.ones((GRID_SIZE, GRID_SIZE), bool) for s in shown]
    save_grid(os.path.join(out_dir, "grid.png"), images, masks)
    report = {"train_images": len(train), "grid": os.path.join(out_dir, "grid.png")}
    anomalous = [s for s in samples(cfg, "test") if s.label and s.mask]
    if anomalous:
        covs, areas = [], []
        for s in anomalous:
            fg = estimate_foreground(load_image(s.image, 256))
            covs.append(coverage(fg, load_mask(s.mask, 256)))
            areas.append(float(fg.mean()))
        covs = np.array(covs)
        report.update({"test_anomalies": len(anomalous), "min_defect_coverage": float(covs.min()),
                       "mean_defect_coverage": float(covs.mean()),
                       "share_images_coverage_ge_95": float((covs >= 0.95).mean()),
                       "mean_foreground_area": float(np.mean(areas))})
        log.info("estimated foreground on %d anomalous test images: defect pixels covered min %.4f, mean %.4f "
                 "(%.1f%% of images >= 95%%); foreground area mean %.1f%% of the image", len(anomalous),
                 covs.min(), covs.mean(), 100 * (covs >= 0.95).mean(), 100 * np.mean(areas))
    write_json(os.path.join(out_dir, "foreground.json"), report)
    log.info("wrote %s", report["grid"])
    return report
