"""The scoring loop: image scores and anomaly maps over a loader, optionally under attack and with test-time
adaptation, through the method's read-out."""
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from attacks import APGD, PGD, Attack
from utils.anomaly_map import anomaly_maps
from utils.precision import autocast

TARGET_LABELS = {"both": (0, 1), "normal": (0,), "anomalous": (1,)}


def attack_labels(model, batch: dict) -> torch.Tensor:
    """Patch labels for the label-aware attack loss; an anomalous image without a mask counts as all-anomalous."""
    masks = batch["mask"]
    b = masks.shape[0]
    labels = torch.nn.functional.adaptive_max_pool2d(masks[:, None], model.grid_size).reshape(b, -1)
    labels[(batch["label"] == 1) & ~batch["has_mask"]] = 1.0
    return labels


def make_attack(name: str, method, model, eps: float, steps: int, cfg, adapter=None, loss_fn=None) -> Attack:
    """The test attack on the method's objective (or `loss_fn`); with `adapter`, an adaptive attacker that
    differentiates through the test-time adaptation (the adapted model's outputs for the attacked images)."""
    e = cfg.eval
    forward = None if adapter is None else (lambda x: adapter(x, differentiable=True, update=False))
    return (APGD if name == "apgd" else PGD)(model, eps, steps, random_start=e.random_start, restarts=e.restarts,
                                            seed=cfg.seed, loss_fn=loss_fn or method.attack_loss, forward=forward,
                                            compile=cfg.compile and method.compilable and adapter is None)


def score_loader(method, model, batches, device, bf16: bool, attack: Optional[Attack] = None, desc: str = "clean",
                 show: bool = True, keep_images: bool = False, target: str = "both", adapter=None) -> dict:
    """Scores and maps over a loader, optionally under attack (only of the `target` images), and optionally
    through the test-time adapter on each (possibly attacked) batch; the adapter sees the images only, never the
    labels, and starts from the trained weights (online adapters carry over this loader's batches only).

    Returns scores (n,), maps (n, H, W), labels (n,), masks (n, H, W), report (merged attack checks or None),
    features (n, D) when the method reads some out, and with keep_images the (attacked) input images.
    """
    model.eval()
    if adapter is not None:
        adapter.reset()
    scores, maps, labels, masks, images, features, report = [], [], [], [], [], [], None
    for batch in tqdm(batches, desc=desc, leave=False, disable=not show, dynamic_ncols=True):
        x = batch["image"].to(device, non_blocking=True)
        if attack is not None:
            chosen = torch.isin(batch["label"], torch.tensor(TARGET_LABELS[target])).to(device)
            if chosen.any():
                with autocast(device, bf16):
                    adv = attack(x[chosen], attack_labels(model, batch).to(device)[chosen])
                x = x.clone()
                x[chosen] = adv
                report = attack.last_report if report is None else report.merge(attack.last_report)
        with torch.no_grad(), autocast(device, bf16):
            out = method.score(model, x, adapter)
        scores.append(out.image_scores.float().cpu().numpy())
        maps.append(anomaly_maps(out.patch_map.float(), model.grid_size, batch["mask"].shape[-2:],
                                 model.cfg.smoothing_sigma, model.cfg.smoothing_radius))
        if out.features is not None:
            features.append(out.features.float().cpu().numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy().astype(bool))
        if keep_images:
            images.append(x.detach().cpu())
    result = {"scores": np.concatenate(scores), "maps": np.concatenate(maps), "labels": np.concatenate(labels),
              "masks": np.concatenate(masks), "report": report,
              "features": np.concatenate(features) if features else None}
    if keep_images:
        result["images"] = torch.cat(images)
    return result
