"""Evaluation: clean and under PGD at each eps; image AUROC from top-k scores, pixel AUROC from smoothed maps."""
import os
import time
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from attacks import PGD, AttackReport
from engine.common import autocast, loader, log, resolve_device, test_dataset
from models.patchguard import PatchGuard
from utils.anomaly_map import anomaly_maps
from utils.checkpoint import load_model
from utils.config import RunConfig
from utils.io import ensure_writable_dir, write_json
from utils.metrics import auroc


def attack_labels(model: PatchGuard, batch: dict) -> torch.Tensor:
    """Patch labels for the label-aware attack loss; an anomalous image without a mask counts as all-anomalous."""
    masks = batch["mask"]
    b, h, w = masks.shape
    gh, gw = model.grid_size
    labels = torch.nn.functional.adaptive_max_pool2d(masks[:, None], (gh, gw)).reshape(b, -1)
    no_mask = (batch["label"] == 1) & ~batch["has_mask"]
    labels[no_mask] = 1.0
    return labels


def predict(model: PatchGuard, batches, device, bf16: bool, attack: Optional[PGD] = None, desc: str = "clean",
            show: bool = True, keep_images: bool = False) -> dict:
    """Image scores and anomaly maps over a loader, optionally under attack.

    Returns scores (n,), maps (n, H, W), labels (n,), masks (n, H, W), report (merged attack checks or None),
    and with keep_images the (attacked) input images (n, 3, H, W).
    """
    model.eval()
    scores, maps, labels, masks, images, report = [], [], [], [], [], None
    for batch in tqdm(batches, desc=desc, leave=False, disable=not show, dynamic_ncols=True):
        x = batch["image"].to(device)
        if attack is not None:
            with autocast(device, bf16):
                x = attack(x, attack_labels(model, batch).to(device))
            report = attack.last_report if report is None else report.merge(attack.last_report)
        with torch.no_grad(), autocast(device, bf16):
            logits = model(x).float()
        scores.append(model.image_scores(logits).cpu().numpy())
        maps.append(anomaly_maps(logits, model.grid_size, batch["mask"].shape[-2:], model.cfg.smoothing_sigma,
                                 model.cfg.smoothing_radius))
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy().astype(bool))
        if keep_images:
            images.append(x.detach().cpu())
    out = {"scores": np.concatenate(scores), "maps": np.concatenate(maps), "labels": np.concatenate(labels),
           "masks": np.concatenate(masks), "report": report}
    if keep_images:
        out["images"] = torch.cat(images)
    return out


def metrics(pred: dict, has_masks: bool) -> dict:
    out = {"image_auroc": auroc(pred["scores"], pred["labels"])}
    if has_masks:
        out["pixel_auroc"] = auroc(pred["maps"], pred["masks"])
    return out


def checkpoint_path(cfg: RunConfig) -> str:
    return cfg.checkpoint or cfg.final_checkpoint


def run_test(cfg: RunConfig) -> dict:
    ensure_writable_dir(cfg.output_dir)
    device = resolve_device(cfg.device)
    path = checkpoint_path(cfg)
    model, _ = load_model(path, cfg.model)
    model.to(device).eval()
    dataset = test_dataset(cfg, model.cfg.image_size, model.patch_size)
    batches = loader(dataset, cfg.data.test_batch_size, cfg.data.num_workers)
    n_anom = sum(s.label for s in dataset.samples)
    log.info("test: %s, %d images (%d anomalous)%s", path, len(dataset), n_anom,
             "" if dataset.has_masks else "; no pixel masks: image metrics only")
    results = {"checkpoint": os.path.abspath(path), "dataset": cfg.data.dataset, "class_name": cfg.data.class_name,
               "num_images": len(dataset), "num_anomalous": n_anom, "settings": []}
    t0 = time.time()
    res = metrics(predict(model, batches, device, cfg.bf16, show=cfg.tqdm), dataset.has_masks)
    results["settings"].append({"attack": "none", "eps": 0.0, "steps": 0, **res, "seconds": time.time() - t0})
    if cfg.eval.adv_test and cfg.eval.step_test > 0:
        for eps in cfg.eval.epsilon_test:
            attack = PGD(model, eps, cfg.eval.step_test, random_start=cfg.eval.random_start,
                         restarts=cfg.eval.restarts, model_mode="eval", seed=cfg.seed)
            t0 = time.time()
            pred = predict(model, batches, device, cfg.bf16, attack, desc=f"PGD eps {eps * 255:g}/255", show=cfg.tqdm)
            res, report = metrics(pred, dataset.has_masks), pred["report"]
            results["settings"].append({"attack": "pgd", "eps": eps, "eps_255": eps * 255, "steps": cfg.eval.step_test,
                                        "random_start": cfg.eval.random_start, "restarts": cfg.eval.restarts,
                                        **res, "checks": report.as_dict(), "seconds": time.time() - t0})
            if not report.ok:
                log.warning("attack check failed: %s", report.as_dict())
    write_json(os.path.join(cfg.output_dir, "metrics.json"), results)
    log.info("\n%s", format_table(results))
    log.info("wrote %s", os.path.join(cfg.output_dir, "metrics.json"))
    return results


def format_table(results: dict) -> str:
    rows = [f"{'setting':<22} {'image AUROC':>12} {'pixel AUROC':>12} {'seconds':>8}"]
    for s in results["settings"]:
        name = "clean" if s["attack"] == "none" else f"PGD-{s['steps']} eps {s['eps_255']:g}/255"
        pix = f"{s['pixel_auroc']:.4f}" if "pixel_auroc" in s else "n/a"
        rows.append(f"{name:<22} {s['image_auroc']:>12.4f} {pix:>12} {s['seconds']:>8.1f}")
    return "\n".join(rows)
