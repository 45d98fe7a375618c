"""--mode test: clean, then every attack x eps x steps setting on the same checkpoint, each without and (when the
method has a test-time adapter) with adaptation, attacked by an unaware and by an adaptive attacker.

Image scores and anomaly maps come from the method's read-out. Every attacked setting records its post-attack
checks (max |delta| vs eps, range, NaN, zero-gradient share).
"""
import hashlib
import itertools
import json
import os
import time

import numpy as np
from torch.utils.data import Subset

from config import RunConfig
from datasets.assembly import test_dataset
from engine.common import loader, log
from engine.loading import checkpoint_path, load_for_evaluation
from engine.reporting import format_table, save_sweep_plots, setting_label
from engine.scoring import make_attack, score_loader
from utils.distributed import gather_in_order, is_main, rank, world_size
from utils.errors import UserError
from utils.io import ensure_writable_dir, write_json
from utils.metrics import evaluate
from utils.readout import READOUT_KEYS

# 2: test-time adaptation never outlives its batch or setting (rows of version 1 after a TTA row were leaky)
EVALUATION_VERSION = 2


def attack_settings(cfg: RunConfig):
    e = cfg.eval
    if not e.adv_test:
        return []
    if 0 in e.epsilon_test or 0 in e.step_test:
        log.info("eps 0 or 0 steps leave the images clean: reported once, as the clean setting")
    return [(a, eps, steps) for a, eps, steps in itertools.product(e.attack, e.epsilon_test, e.step_test)
            if steps > 0 and eps > 0]


def rows(cfg: RunConfig, adapter, objectives):
    """(attack, eps, steps, objective, adapter or None, attacker) for every row: clean, then each attack setting
    once per attack objective; with an adapter each also with TTA, attacked rows once per attacker (unaware of the
    adaptation, or adaptive)."""
    out = []
    for name, eps, steps in [("none", 0.0, 0)] + attack_settings(cfg):
        for objective in [None] if name == "none" else objectives:
            out.append((name, eps, steps, objective, None, None))
            if adapter is not None:
                attackers = [None] if name == "none" else list(adapter.attackers)
                out += [(name, eps, steps, objective, adapter, attacker) for attacker in attackers]
    return out


MIN_METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def with_minimum_rows(settings: list) -> list:
    """After each attack setting run with several objectives (its rows are contiguous): per TTA row, one row with
    each metric's minimum over the objectives, i.e. the strongest objective per metric."""
    out = []
    for _, block in itertools.groupby(settings, key=lambda s: (s["attack"], s["eps_255"], s["steps"])):
        block = list(block)
        out += block
        if len({s.get("objective") for s in block}) < 2:
            continue
        for tta, attacker in dict.fromkeys((s["tta"], s.get("attacker")) for s in block):
            same = [s for s in block if (s["tta"], s.get("attacker")) == (tta, attacker)]
            out.append({**{k: same[0][k] for k in ("attack", "eps", "eps_255", "steps")}, "tta": tta,
                        "attacker": attacker, "objective": "min", "seconds": 0.0, "metrics_seconds": 0.0,
                        "key": {**same[0]["key"], "objective": "min"},
                        **{m: min(x[m] for x in same) for m in MIN_METRICS if all(m in x for x in same)}})
    return out


def setting_key(cfg: RunConfig, model, name: str, eps: float, steps: int, tta, attacker=None, objective=None) -> dict:
    """What a setting's numbers depend on besides the checkpoint: equal keys, equal results."""
    d = cfg.data
    key = {"data": f"{d.dataset}/{d.class_name} at {os.path.abspath(d.dataset_dir)}", "attack": name,
           "eps_255": round(eps * 255, 6), "steps": steps,
           **{k: getattr(model.cfg, k) for k in READOUT_KEYS}, "precision": cfg.precision,
           "tta": repr(tta) if tta else None,
           "evaluation": EVALUATION_VERSION}
    if name != "none":
        e = cfg.eval
        key.update(attack_target=e.attack_target, random_start=e.random_start, restarts=e.restarts, seed=cfg.seed,
                   attacker=attacker, objective=objective)
    return key


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finished_settings(metrics_path: str, digest: str, overwrite: bool) -> list:
    """Settings already in metrics.json for the same checkpoint file (by content). Results of another checkpoint
    are never replaced silently: refused unless --overwrite."""
    try:
        with open(metrics_path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    if old.get("checkpoint_sha256") != digest:
        if overwrite or "checkpoint_sha256" not in old:
            return []
        raise UserError(f"{metrics_path} holds the results of another checkpoint ({old.get('checkpoint')}); test "
                        f"into a new --output_dir, or replace them with --overwrite")
    return [s for s in old.get("settings", []) if isinstance(s, dict) and "key" in s]


def run_test(cfg: RunConfig) -> dict:
    """Clean, then every attack setting; metrics.json is rewritten (atomically) after each setting, and a re-run
    for the same checkpoint skips the settings it already holds (--recompute runs them again)."""
    ensure_writable_dir(cfg.output_dir)
    path = checkpoint_path(cfg)
    method, model, device = load_for_evaluation(cfg)
    dataset = test_dataset(cfg, model.cfg.image_size, model.patch_size)
    shard = list(range(rank(), len(dataset), world_size()))  # under torchrun each rank scores its share
    batches = loader(Subset(dataset, shard) if world_size() > 1 else dataset, cfg.data.test_batch_size,
                     cfg.data.num_workers)
    n_anom = sum(s.label for s in dataset.samples)
    log.info("test: %s, %d images (%d anomalous)%s", path, len(dataset), n_anom,
             "" if dataset.has_masks else "; no pixel masks: image metrics only")
    metrics_path = os.path.join(cfg.output_dir, "metrics.json")
    digest = file_digest(path)
    done = finished_settings(metrics_path, digest, cfg.train.overwrite)
    done = [] if cfg.eval.recompute else done
    results = {"checkpoint": os.path.abspath(path), "checkpoint_sha256": digest, "method": method.name,
               "dataset": cfg.data.dataset, "class_name": cfg.data.class_name, "num_images": len(dataset),
               "num_anomalous": n_anom, "attack_target": cfg.eval.attack_target, "settings": list(done)}
    requested = []
    total_start = time.time()
    adapter = method.adapter(model, cfg)
    objectives = method.attack_objectives(cfg)
    if adapter is not None:
        log.info("test-time adaptation: %r; every setting is reported without and with it, attacked settings "
                 "with TTA once per attacker (%s)", adapter, ", ".join(adapter.attackers))
    for name, eps, steps, objective, tta, attacker in rows(cfg, adapter, list(objectives)):
        key = setting_key(cfg, model, name, eps, steps, tta, attacker, objective)
        previous = next((s for s in done if s["key"] == key), None)
        if previous is not None:
            log.info("%s: already in %s for this checkpoint, skipped (--recompute runs it again)",
                     setting_label(previous), metrics_path)
            requested.append(previous)
            continue
        setting = run_setting(cfg, method, model, device, batches, dataset.has_masks, name, eps, steps, tta,
                              attacker, objective, objectives[objective] if name != "none" else None,
                              groups=[s.group for s in dataset.samples], shard=shard)
        setting["key"] = key
        results["settings"] = [s for s in results["settings"] if s["key"] != key] + [setting]
        requested.append(setting)
        if is_main():
            write_json(metrics_path, results)  # finished settings survive a crash or Ctrl-C in the next one
    results["seconds"] = time.time() - total_start
    results["metrics_seconds"] = sum(s["metrics_seconds"] for s in requested)
    requested = with_minimum_rows(requested)
    minimum = [s for s in requested if s.get("objective") == "min"]
    results["settings"] = [s for s in results["settings"] if s["key"] not in [m["key"] for m in minimum]] + minimum
    shown = dict(results, settings=requested)
    if not is_main():
        return shown
    write_json(metrics_path, results)
    save_sweep_plots(shown, os.path.join(cfg.output_dir, "plots"))
    log.info("\n%s", format_table(shown))
    log.info("evaluation %.1fs, of which metrics %.2fs; wrote %s", results["seconds"], results["metrics_seconds"],
             metrics_path)
    return shown


def run_setting(cfg: RunConfig, method, model, device, batches, has_masks: bool, name: str, eps: float,
                steps: int, adapter=None, attacker=None, objective=None, loss_fn=None, groups=(), shard=()) -> dict:
    attack = None
    if name != "none":
        attack = make_attack(name, method, model, eps, steps, cfg, adapter if attacker == "adaptive" else None,
                             loss_fn)
    t0 = time.time()
    row = {"attack": name, "eps_255": eps * 255, "steps": steps, "tta": adapter is not None, "attacker": attacker,
           "objective": objective}
    desc = setting_label(row)
    pred = score_loader(method, model, batches, device, cfg.bf16, attack, desc=desc, show=cfg.tqdm and is_main(),
                        target=cfg.eval.attack_target, adapter=adapter)
    pred = gather_in_order(pred, shard)  # all ranks' scores and maps, in test-set order
    t1 = time.time()
    setting = {"attack": name, "eps": eps, "eps_255": eps * 255, "steps": steps, "tta": adapter is not None,
               "attacker": attacker, "objective": objective,
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
