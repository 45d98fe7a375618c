"""Adversarial training with pseudo-anomalies (official recipe), resumable and interrupt-safe."""
import csv
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from attacks import PGD
from datasets.assembly import train_dataset
from engine.common import loader, log, resolve_device
from datasets.dataset import to_tensor
from methods import get_method
from models.saliency import saliency
from utils.checkpoint import load_state, read_checkpoint, save_checkpoint
from config import RunConfig
from utils.errors import UserError
from utils.io import atomic_write, ensure_writable_dir
from utils.seed import rng_state, seed_everything, set_rng_state


def refuse_to_overwrite(cfg: RunConfig) -> None:
    """A new training run never replaces another run's checkpoints unless asked (--resume or --overwrite)."""
    if cfg.train.resume or cfg.train.overwrite:
        return
    for path, what in ((cfg.final_checkpoint, "a finished model"), (cfg.last_checkpoint, "an unfinished run")):
        if os.path.exists(path):
            raise UserError(f"{path} holds {what}; continue it with --resume, train into a new --output_dir, "
                            f"or replace it with --overwrite")


def run_train(cfg: RunConfig) -> str:
    """Train and return the path of the final checkpoint."""
    refuse_to_overwrite(cfg)
    ensure_writable_dir(cfg.output_dir)
    ensure_writable_dir(cfg.checkpoints)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    method = get_method(cfg.method)
    model = method.build(cfg.model, cfg.train.backbone_weights).to(device)
    dataset = train_dataset(cfg, model.patch_size)
    t = cfg.train
    guided = cfg.data.pseudo_anomaly == "attention"
    warmup = 0 if t.backbone_weights else cfg.data.saliency_warmup
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs, eta_min=t.lr * t.lr_decay_factor)
    last_path = cfg.last_checkpoint
    start_epoch = 0
    if t.resume:
        ckpt = read_checkpoint(last_path)
        if ckpt.get("config", {}).get("model") != cfg.as_dict()["model"]:
            raise UserError(f"{last_path} was trained with another model config; resume with the same options")
        load_state(model, ckpt["model"], last_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        if ckpt.get("saliency") is not None:
            dataset.set_saliency(ckpt["saliency"].numpy())
        start_epoch = ckpt["epoch"] + 1
        log.info("resumed from %s at epoch %d", last_path, start_epoch + 1)
    log.info("%s model: %s at %dpx, %d patches, %.1fM parameters; device %s", method.name, cfg.model.backbone,
             cfg.model.image_size, model.num_patches, sum(p.numel() for p in model.parameters()) / 1e6, device)
    if t.adv_train:
        log.info("training attack: %r", PGD(model, t.epsilon_train, t.step_train, model_mode=t.attack_mode,
                                            loss_fn=method.attack_loss))
    else:
        log.info("training attack: none (clean training: the method's default, --no_adv_train, --step_train 0 "
                 "or --epsilon_train 0)")

    history_path = os.path.join(cfg.output_dir, "train.csv")
    epochs = tqdm(range(start_epoch, t.epochs), desc="epochs", disable=not cfg.tqdm, initial=start_epoch,
                  total=t.epochs, dynamic_ncols=True)
    for epoch in epochs:
        dataset.set_epoch(epoch)
        if guided and epoch >= warmup and (epoch - warmup) % max(1, cfg.data.saliency_every) == 0:
            dataset.set_saliency(training_saliency(model, dataset, cfg, device))
        shuffle_gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        batches = loader(dataset, cfg.data.train_batch_size, cfg.data.num_workers, shuffle=True, generator=shuffle_gen)
        model.train()
        start, total, count = time.time(), 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, disable=not cfg.tqdm,
                   dynamic_ncols=True)
        for batch in bar:
            loss = method.train_step(model, batch, optimizer, cfg, device)
            if not math.isfinite(loss):
                raise UserError(f"loss became {loss} at epoch {epoch + 1}; lower --lr or try without --bf16")
            total += loss * len(batch["image"])
            count += len(batch["image"])
            bar.set_postfix(loss=f"{loss:.3f}")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        mean_loss = total / max(count, 1)
        epochs.set_postfix(loss=f"{mean_loss:.3f}")
        _append_history(history_path, epoch + 1, mean_loss, lr, time.time() - start)
        state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch, rng=rng_state(),
                     saliency=None if dataset.saliency is None else torch.from_numpy(dataset.saliency))
        save_checkpoint(last_path, model, cfg.as_dict(), **state)
        if t.save_every and (epoch + 1) % t.save_every == 0:
            save_checkpoint(cfg.checkpoint_file(f"_epoch{epoch + 1:04d}"), model, cfg.as_dict(),
                            epoch=epoch)
        if not cfg.tqdm or (epoch + 1) % max(1, t.epochs // 10) == 0 or epoch + 1 == t.epochs:
            log.info("epoch %d/%d  loss %.4f  lr %.2e  %.1fs", epoch + 1, t.epochs, mean_loss, lr, time.time() - start)
    dataset.set_epoch(t.epochs)  # a fresh synthetic copy of each training image for the method's statistics
    method.after_training(model, loader(dataset, cfg.data.train_batch_size, cfg.data.num_workers), cfg, device)
    save_checkpoint(cfg.final_checkpoint, model, cfg.as_dict(), epoch=t.epochs - 1)
    log.info("saved %s", cfg.final_checkpoint)
    return cfg.final_checkpoint


def training_saliency(model, dataset, cfg: RunConfig, device) -> np.ndarray:
    """The model's own CLS-to-patch attention over every training image, (n, gh, gw) in [0, 1]."""
    was_training = model.training
    model.eval()
    maps = []
    for i in range(0, len(dataset), cfg.data.train_batch_size):
        images = torch.stack([to_tensor(im) for im in dataset.images[i:i + cfg.data.train_batch_size]]).to(device)
        maps.append(saliency(model.feature_extractor, images, cfg.data.saliency_layers,
                             cfg.data.saliency_heads).cpu())
    model.train(was_training)
    return torch.cat(maps).reshape(len(dataset), *model.grid_size).numpy()


def _append_history(path: str, epoch: int, loss: float, lr: float, seconds: float) -> None:
    rows = []
    if os.path.exists(path) and epoch > 1:
        with open(path) as f:
            rows = [r for r in csv.reader(f)][1:]
        rows = [r for r in rows if int(r[0]) < epoch]  # after a resume, drop epochs that are redone

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "loss", "lr", "seconds"])
            w.writerows(rows + [[epoch, f"{loss:.6f}", f"{lr:.6e}", f"{seconds:.2f}"]])
    atomic_write(path, write)
