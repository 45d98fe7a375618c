"""Evaluation: clean, then every attack x eps x steps setting on the same checkpoint.

Image scores are the mean of the top-k patch logits; anomaly maps are the smoothed, upsampled patch logits.
Every attacked setting records its post-attack checks (max |delta| vs eps, range, NaN, zero-gradient share).
"""
import dataclasses
import hashlib
import itertools
import json
import os
import time
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from attacks import APGD, PGD, Attack
from config import RunConfig
from datasets.assembly import test_dataset
from engine.common import loader, log, resolve_device
from methods import get_method, load_model
from models.patchguard import READOUT_KEYS, check_readout
from utils.anomaly_map import anomaly_maps
from utils.figures import pyplot, save_figure
from utils.io import ensure_writable_dir, write_json
from utils.metrics import evaluate
from utils.distributed import gather_in_order, is_main, rank, world_size
from utils.precision import autocast

TARGET_LABELS = {"both": (0, 1), "normal": (0,), "anomalous": (1,)}


def attack_labels(model, batch: dict) -> torch.Tensor:
    """Patch labels for the label-aware attack loss; an anomalous image without a mask counts as all-anomalous."""
    masks = batch["mask"]
    b = masks.shape[0]
    labels = torch.nn.functional.adaptive_max_pool2d(masks[:, None], model.grid_size).reshape(b, -1)
    labels[(batch["label"] == 1) & ~batch["has_mask"]] = 1.0
    return labels


def make_attack(name: str, model, eps: float, steps: int, cfg: RunConfig) -> Attack:
    """The test attack on the model's own objective (its method's attack loss)."""
    e = cfg.eval
    loss_fn = get_method(model_method(model)).attack_loss
    common = dict(random_start=e.random_start, restarts=e.restarts, seed=cfg.seed, loss_fn=loss_fn,
                  compile=cfg.compile)
    return (APGD if name == "apgd" else PGD)(model, eps, steps, **common)


def model_method(model) -> str:
    return getattr(model, "method_name", "patchguard")


def predict(model, batches, device, bf16: bool, attack: Optional[Attack] = None, desc: str = "clean",
            show: bool = True, keep_images: bool = False, target: str = "both", adapter=None,
            features: bool = False) -> dict:
    """Image scores and anomaly maps over a loader, optionally under attack (only of the `target` images), and
    optionally with test-time adaptation on each (possibly attacked) batch before it is scored; `adapter` sees
    the images only, never the labels.

    Returns scores (n,), maps (n, H, W), labels (n,), masks (n, H, W), report (merged attack checks or None),
    and with keep_images the (attacked) input images (n, 3, H, W).
    """
    model.eval()
    scores, maps, labels, masks, images, extra, report = [], [], [], [], [], [], None
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
        if adapter is not None:
            adapter.adapt(x)
        with torch.no_grad(), autocast(device, bf16):
            if features:  # class-token features before the head (CaSA), for the t-SNE picture
                feats, cls_maps, _ = model.features_and_attention(x)
                logits = model.outputs(feats, cls_maps).float()
                extra.append(feats.float().cpu().numpy())
            else:
                logits = model(x).float()
        scores.append(model.image_scores(logits).cpu().numpy())
        maps.append(anomaly_maps(model.patch_map(logits), model.grid_size, batch["mask"].shape[-2:],
                                 model.cfg.smoothing_sigma, model.cfg.smoothing_radius))
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy().astype(bool))
        if keep_images:
            images.append(x.detach().cpu())
    out = {"scores": np.concatenate(scores), "maps": np.concatenate(maps), "labels": np.concatenate(labels),
           "masks": np.concatenate(masks), "report": report}
    if keep_images:
        out["images"] = torch.cat(images)
    if features:
        out["features"] = np.concatenate(extra)
    return out


def checkpoint_path(cfg: RunConfig) -> str:
    return cfg.checkpoint or cfg.final_checkpoint


def load_for_evaluation(cfg: RunConfig):
    """(model in eval mode on its device, device) from --checkpoint or the run's final checkpoint.

    Read-out options given explicitly (--top_k, --smoothing_sigma, --smoothing_radius) replace the checkpoint's:
    they change no weight. The log says which values are used and where each came from.
    """
    device = resolve_device(cfg.device)
    model, _ = load_model(checkpoint_path(cfg), cfg.model)
    given = {k: getattr(cfg.eval, k) for k in READOUT_KEYS if getattr(cfg.eval, k) is not None}
    model.cfg = dataclasses.replace(model.cfg, **given)
    check_readout(model.cfg, model.num_patches)
    log.info("read-out: %s", ", ".join(f"{k} {getattr(model.cfg, k):g} ({'command line' if k in given else 'checkpoint'})"
                                       for k in READOUT_KEYS))
    return model.to(device).eval(), device


def attack_settings(cfg: RunConfig):
    e = cfg.eval
    if not e.adv_test:
        return []
    if 0 in e.epsilon_test or 0 in e.step_test:
        log.info("eps 0 or 0 steps leave the images clean: reported once, as the clean setting")
    return [(a, eps, steps) for a, eps, steps in itertools.product(e.attack, e.epsilon_test, e.step_test)
            if steps > 0 and eps > 0]


def setting_key(cfg: RunConfig, model, name: str, eps: float, steps: int, tta) -> dict:
    """What a setting's numbers depend on besides the checkpoint: equal keys, equal results."""
    d = cfg.data
    key = {"data": f"{d.dataset}/{d.class_name} at {os.path.abspath(d.dataset_dir)}", "attack": name,
           "eps_255": round(eps * 255, 6), "steps": steps,
           **{k: getattr(model.cfg, k) for k in READOUT_KEYS}, "bf16": cfg.bf16, "tta": repr(tta) if tta else None}
    if name != "none":
        e = cfg.eval
        key.update(attack_target=e.attack_target, random_start=e.random_start, restarts=e.restarts, seed=cfg.seed)
    return key


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finished_settings(metrics_path: str, digest: str) -> list:
    """Settings already in metrics.json for the same checkpoint file (by content), else none."""
    try:
        with open(metrics_path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or old.get("checkpoint_sha256") != digest:
        return []
    return [s for s in old.get("settings", []) if isinstance(s, dict) and "key" in s]


def run_test(cfg: RunConfig) -> dict:
    """Clean, then every attack setting; metrics.json is rewritten (atomically) after each setting, and a re-run
    for the same checkpoint skips the settings it already holds (--recompute runs them again)."""
    ensure_writable_dir(cfg.output_dir)
    path = checkpoint_path(cfg)
    model, device = load_for_evaluation(cfg)
    dataset = test_dataset(cfg, model.cfg.image_size, model.patch_size)
    shard = list(range(rank(), len(dataset), world_size()))  # under torchrun each rank scores its share
    batches = loader(Subset(dataset, shard) if world_size() > 1 else dataset, cfg.data.test_batch_size,
                     cfg.data.num_workers)
    n_anom = sum(s.label for s in dataset.samples)
    log.info("test: %s, %d images (%d anomalous)%s", path, len(dataset), n_anom,
             "" if dataset.has_masks else "; no pixel masks: image metrics only")
    metrics_path = os.path.join(cfg.output_dir, "metrics.json")
    digest = file_digest(path)
    done = [] if cfg.eval.recompute else finished_settings(metrics_path, digest)
    results = {"checkpoint": os.path.abspath(path), "checkpoint_sha256": digest, "dataset": cfg.data.dataset,
               "class_name": cfg.data.class_name, "num_images": len(dataset), "num_anomalous": n_anom,
               "attack_target": cfg.eval.attack_target, "settings": list(done)}
    requested = []
    total_start = time.time()
    method = get_method(model_method(model))
    adapter = method.adapter(model, cfg)
    if adapter is not None:
        log.info("test-time adaptation: %r; every setting is reported without and with it", adapter)
    for name, eps, steps, tta in [(n, e, s, t) for n, e, s in [("none", 0.0, 0)] + attack_settings(cfg)
                                  for t in ([None, adapter] if adapter is not None else [None])]:
        key = setting_key(cfg, model, name, eps, steps, tta)
        previous = next((s for s in done if s["key"] == key), None)
        if previous is not None:
            log.info("%s: already in %s for this checkpoint, skipped (--recompute runs it again)",
                     setting_label(previous), metrics_path)
            requested.append(previous)
            continue
        setting = run_setting(cfg, model, device, batches, dataset.has_masks, name, eps, steps, tta,
                              groups=[s.group for s in dataset.samples], shard=shard)
        setting["key"] = key
        results["settings"] = [s for s in results["settings"] if s["key"] != key] + [setting]
        requested.append(setting)
        if is_main():
            write_json(metrics_path, results)  # finished settings survive a crash or Ctrl-C in the next one
    results["seconds"] = time.time() - total_start
    results["metrics_seconds"] = sum(s["metrics_seconds"] for s in requested)
    shown = dict(results, settings=requested)
    if not is_main():
        return shown
    write_json(metrics_path, results)
    save_sweep_plots(shown, os.path.join(cfg.output_dir, "plots"))
    log.info("\n%s", format_table(shown))
    log.info("evaluation %.1fs, of which metrics %.2fs; wrote %s", results["seconds"], results["metrics_seconds"],
             metrics_path)
    return shown


def run_setting(cfg: RunConfig, model, device, batches, has_masks: bool, name: str, eps: float,
                steps: int, adapter=None, groups=(), shard=()) -> dict:
    attack = None if name == "none" else make_attack(name, model, eps, steps, cfg)
    t0 = time.time()
    desc = ("clean" if attack is None else f"{name.upper()}-{steps} eps {eps * 255:g}/255") + (" + TTA" if adapter else "")
    pred = predict(model, batches, device, cfg.bf16, attack, desc=desc, show=cfg.tqdm and is_main(),
                   target=cfg.eval.attack_target, adapter=adapter)
    pred = gather_in_order(pred, shard)  # all ranks' scores and maps, in test-set order
    t1 = time.time()
    setting = {"attack": name, "eps": eps, "eps_255": eps * 255, "steps": steps, "tta": adapter is not None,
               **evaluate(pred["scores"], pred["labels"], pred["maps"], pred["masks"], has_masks)}
    if any(g is not None for g in groups):  # e.g. NIH patient sex: the same metrics within each group
        groups = np.array([str(g) for g in groups])
        setting["subgroups"] = {
            g: evaluate(pred["scores"][groups == g], pred["labels"][groups == g], pred["maps"][groups == g],
                        pred["masks"][groups == g], has_masks) for g in sorted(set(groups))}
    setting.update(seconds=time.time() - t0, metrics_seconds=time.time() - t1)
    if attack is not None:
        setting.update(repr=repr(attack), random_start=cfg.eval.random_start, restarts=cfg.eval.restarts)
        if pred["report"] is not None:
            setting["checks"] = pred["report"].as_dict()
            if not pred["report"].ok:
                log.warning("attack check failed for %s: %s", desc, pred["report"].as_dict())
    return setting


def setting_label(s: dict) -> str:
    label = "clean" if s["attack"] == "none" else f"{s['attack'].upper()}-{s['steps']} eps {s['eps_255']:g}/255"
    return label + (" + TTA" if s.get("tta") else "")


def format_table(results: dict) -> str:
    cols = [("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"),
            ("img F1max", "image_f1_max")]
    rows = [f"{'setting':<24}" + "".join(f"{c:>13}" for c, _ in cols) + f"{'zero-grad':>10}{'seconds':>9}"]
    for s in results["settings"]:
        vals = "".join(f"{s[k]:>13.4f}" if k in s else f"{'n/a':>13}" for _, k in cols)
        zg = f"{s['checks']['zero_gradient_share']:>10.2f}" if "checks" in s else f"{'':>10}"
        rows.append(f"{setting_label(s):<24}{vals}{zg}{s['seconds']:>9.1f}")
    return "\n".join(rows)


def save_sweep_plots(results: dict, out_dir: str) -> None:
    """AUROC against eps (one line per attack and step count) and against steps (per attack and eps)."""
    attacked = [s for s in results["settings"] if s["attack"] != "none" and not s.get("tta")]
    clean = results["settings"][0]
    metrics = [m for m in ("image_auroc", "pixel_auroc") if m in clean]
    for x_key, group_key, name in (("eps_255", "steps", "auroc_vs_eps"), ("steps", "eps_255", "auroc_vs_steps")):
        if len({s[x_key] for s in attacked}) < 2:
            continue
        plt = pyplot()
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for (attack, group) in sorted({(s["attack"], s[group_key]) for s in attacked}):
                pts = sorted((s[x_key], s[metric]) for s in attacked if s["attack"] == attack and s[group_key] == group)
                if x_key == "eps_255":
                    pts = [(0.0, clean[metric])] + pts
                label = f"{attack.upper()}-{group}" if group_key == "steps" else f"{attack.upper()} eps {group:g}/255"
                ax.plot(*zip(*pts), marker="o", label=label)
            ax.axhline(clean[metric], color="gray", linestyle=":", label="clean")
            ax.set_xlabel("eps (x/255)" if x_key == "eps_255" else "attack steps")
            if x_key == "steps":
                ax.set_xscale("log")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, os.path.join(out_dir, name + ".png"), dpi=90, tight=False)
