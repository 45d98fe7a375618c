"""--mode predict: scores, decisions and heatmaps for new images without ground truth, with the PyTorch model of a
run, or with an exported ONNX model alone (--onnx: ONNX Runtime, no PyTorch model is built).

The decision threshold comes from normal images only (--threshold_dir, else the class's normal training images),
never from the test set: threshold = the --threshold_quantile quantile of their image scores. An ONNX model carries
the threshold and colour range computed at export; --threshold_dir recomputes the threshold with the ONNX model.
"""
import csv
import io
import json
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
from utils.figures import heat_range, pyplot, save_figure
from utils.io import atomic_write, write_json


def _dataset(paths, image_size: int, cfg: RunConfig, patch_size: int = 1) -> AnomalyDataset:
    ds = AnomalyDataset([Sample(p, 0) for p in paths], image_size, patch_size,
                        skip_corrupt=cfg.data.on_corrupt == "skip")
    for p, e in ds.skipped:
        log.warning("skipped %s: %s", p, e)
    return ds


def _threshold_images(cfg: RunConfig):
    e = cfg.eval
    if e.threshold_dir:
        paths = list_images(e.threshold_dir)
        if not paths:
            raise UserError(f"no images in --threshold_dir {e.threshold_dir}")
        return paths, e.threshold_dir
    return [s.image for s in samples(cfg, "train")], "normal training images"


def normal_reference(cfg: RunConfig, method, model, device, bf16: bool) -> dict:
    """Threshold (a quantile of normal images' scores) and heatmap colour range (their maps' 1st to 99.9th
    percentile) from normal images scored by the PyTorch model (in the precision the scores will be made in)."""
    paths, source = _threshold_images(cfg)
    normal = score_loader(method, model, loader(_dataset(paths, model.cfg.image_size, cfg, model.patch_size),
                                                cfg.data.test_batch_size, cfg.data.num_workers), device, bf16,
                          show=False)
    return _reference(normal["scores"], normal["maps"], cfg.eval.threshold_quantile, source)


def _reference(scores, maps, quantile: float, source: str) -> dict:
    lo, hi, flat = heat_range(maps)
    return {"threshold": float(np.quantile(scores, quantile)), "heat_range": [lo, hi], "flat": flat,
            "source": source, "count": len(scores)}


class OnnxScorer:
    """An exported model in ONNX Runtime: scores and maps for batches of images in [0, 1]."""

    def __init__(self, path: str):
        import onnxruntime as ort
        if not os.path.isfile(path):
            raise UserError(f"--onnx {path} not found (make it with --mode export)")
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"cannot load --onnx {path}: {str(e).splitlines()[0]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        shape = self.session.get_inputs()[0].shape
        if "input_size" not in meta or len(shape) != 4:
            raise UserError(f"--onnx {path} is not a model exported by --mode export (no input size in its metadata)")
        self.image_size = int(meta["input_size"])
        if isinstance(shape[2], int) and shape[2] != self.image_size:
            raise UserError(f"--onnx {path}: its input is {shape[2]} px but its metadata say {self.image_size} px")
        self.meta = meta

    def score(self, dataset: AnomalyDataset, batch_size: int) -> dict:
        scores, maps = [], []
        for batch in loader(dataset, batch_size, 0):
            s, m = self.session.run(None, {"images": batch["image"].numpy()})
            scores.append(s)
            maps.append(m)
        return {"scores": np.concatenate(scores), "maps": np.concatenate(maps)}


def run_predict(cfg: RunConfig) -> dict:
    e = cfg.eval
    images = list_images(e.predict_dir)
    if not images:
        raise UserError(f"no images in --predict_dir {e.predict_dir} (png, jpg, bmp or tif)")
    if e.onnx:
        scorer = OnnxScorer(e.onnx)
        ds = _dataset(images, scorer.image_size, cfg)
        if e.threshold_dir:
            paths, source = _threshold_images(cfg)
            normal = scorer.score(_dataset(paths, scorer.image_size, cfg), cfg.data.test_batch_size)
            reference = _reference(normal["scores"], normal["maps"], e.threshold_quantile, source)
        else:
            m = scorer.meta
            lo, hi = json.loads(m["heat_range"])
            reference = {"threshold": float(m["threshold"]), "heat_range": [lo, hi], "flat": m.get("flat") == "True",
                         "source": f"{m.get('threshold_from', 'export')} (stored in {e.onnx})",
                         "count": None, "quantile": float(m.get("threshold_quantile", e.threshold_quantile))}
        pred = scorer.score(ds, cfg.data.test_batch_size)
    else:
        method, model, device = load_for_evaluation(cfg)
        reference = normal_reference(cfg, method, model, device, cfg.bf16)
        ds = _dataset(images, model.cfg.image_size, cfg, model.patch_size)
        pred = score_loader(method, model, loader(ds, cfg.data.test_batch_size, cfg.data.num_workers), device,
                            cfg.bf16, show=cfg.tqdm, desc="scoring")
    return write_predictions(cfg, ds, pred, reference)


def write_predictions(cfg: RunConfig, ds: AnomalyDataset, pred: dict, reference: dict) -> dict:
    threshold = reference["threshold"]
    lo, hi = reference["heat_range"]
    out_dir = os.path.join(cfg.output_dir, "predictions")
    rows = []
    for k, sample in enumerate(ds.samples):
        score = float(pred["scores"][k])
        name = os.path.splitext(os.path.basename(sample.image))[0] + "_heatmap.png"
        _save_heatmap(os.path.join(out_dir, name), ds.images[k], pred["maps"][k], lo, max(hi, threshold), score,
                      score > threshold, reference.get("flat", False))
        rows.append({"image": sample.image, "score": score, "anomalous": score > threshold, "heatmap": name})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "score", "anomalous", "heatmap"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "predictions.csv"), lambda tmp: open(tmp, "w").write(buf.getvalue()))
    quantile = reference.get("quantile", cfg.eval.threshold_quantile)
    result = {"threshold": threshold, "threshold_quantile": quantile, "threshold_from": reference["source"],
              "num_threshold_images": reference["count"], "scored_with": cfg.eval.onnx or "pytorch",
              "predictions": rows}
    write_json(os.path.join(out_dir, "predictions.json"), result)
    log.info("scored %d images, %d above the threshold %.4f (%.0f%% quantile of %s); wrote %s", len(rows),
             sum(r["anomalous"] for r in rows), threshold, 100 * quantile, reference["source"], out_dir)
    return result


def _save_heatmap(path, image, amap, lo, hi, score, anomalous, flat=False):
    fig, axes = pyplot().subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(image)
    axes[0].set_title("anomalous" if anomalous else "normal", color="red" if anomalous else "black")
    axes[1].imshow(image)
    axes[1].imshow(amap, cmap="jet", vmin=lo, vmax=hi, alpha=0.5)
    axes[1].set_title(f"score {score:.3f}" + (" (flat map)" if flat else ""))
    for ax in axes:
        ax.axis("off")
    save_figure(fig, path)
