"""--mode predict: scores, decisions and heatmaps for new images without ground truth.

The decision threshold comes from normal images only (--threshold_dir, else the class's normal training
images), never from the test set: threshold = the --threshold_quantile quantile of their image scores.
"""
import csv
import io
import os

import numpy as np

from config import RunConfig
from datasets.assembly import samples
from datasets.dataset import AnomalyDataset
from datasets.samples import Sample, list_images
from engine.common import loader, log
from engine.loading import load_for_evaluation
from engine.scoring import score_loader
from utils.errors import UserError
from utils.figures import pyplot, save_figure
from utils.io import atomic_write, write_json


def _dataset(paths, model, cfg: RunConfig) -> AnomalyDataset:
    ds = AnomalyDataset([Sample(p, 0) for p in paths], model.cfg.image_size, model.patch_size,
                        skip_corrupt=cfg.data.on_corrupt == "skip")
    for p, e in ds.skipped:
        log.warning("skipped %s: %s", p, e)
    return ds


def run_predict(cfg: RunConfig) -> dict:
    e = cfg.eval
    images = list_images(e.predict_dir)
    if not images:
        raise UserError(f"no images in --predict_dir {e.predict_dir} (png, jpg, bmp or tif)")
    method, model, device = load_for_evaluation(cfg)
    if e.threshold_dir:
        normal_paths, source = list_images(e.threshold_dir), e.threshold_dir
        if not normal_paths:
            raise UserError(f"no images in --threshold_dir {e.threshold_dir}")
    else:
        normal_paths, source = [s.image for s in samples(cfg, "train")], "normal training images"
    normal = score_loader(method, model, loader(_dataset(normal_paths, model, cfg), cfg.data.test_batch_size,
                                   cfg.data.num_workers), device, cfg.bf16, show=False)
    threshold = float(np.quantile(normal["scores"], e.threshold_quantile))
    lo, hi = np.percentile(normal["maps"], 1), np.percentile(normal["maps"], 99.9)
    ds = _dataset(images, model, cfg)
    pred = score_loader(method, model, loader(ds, cfg.data.test_batch_size, cfg.data.num_workers), device, cfg.bf16,
                   show=cfg.tqdm, desc="scoring")
    out_dir = os.path.join(cfg.output_dir, "predictions")
    rows = []
    for k, sample in enumerate(ds.samples):
        score = float(pred["scores"][k])
        name = os.path.splitext(os.path.basename(sample.image))[0] + "_heatmap.png"
        _save_heatmap(os.path.join(out_dir, name), ds.images[k], pred["maps"][k], lo, max(hi, threshold), score,
                      score > threshold)
        rows.append({"image": sample.image, "score": score, "anomalous": score > threshold, "heatmap": name})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "score", "anomalous", "heatmap"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "predictions.csv"), lambda tmp: open(tmp, "w").write(buf.getvalue()))
    result = {"threshold": threshold, "threshold_quantile": e.threshold_quantile, "threshold_from": source,
              "num_threshold_images": len(normal["scores"]), "predictions": rows}
    write_json(os.path.join(out_dir, "predictions.json"), result)
    log.info("scored %d images, %d above the threshold %.4f (%.0f%% quantile of %d %s); wrote %s", len(rows),
             sum(r["anomalous"] for r in rows), threshold, 100 * e.threshold_quantile, len(normal["scores"]),
             source, out_dir)
    return result


def _save_heatmap(path, image, amap, lo, hi, score, anomalous):
    fig, axes = pyplot().subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(image)
    axes[0].set_title("anomalous" if anomalous else "normal", color="red" if anomalous else "black")
    axes[1].imshow(image)
    axes[1].imshow(amap, cmap="jet", vmin=lo, vmax=hi, alpha=0.5)
    axes[1].set_title(f"score {score:.3f}")
    for ax in axes:
        ax.axis("off")
    save_figure(fig, path)
