"""The training loop of every method (its step, model and statistics come from methods/, its pseudo-anomaly
generator's per-epoch hook from datasets/generators.py): pseudo-anomalies made in workers, the single-step training
guard, resumable and interrupt-safe checkpoints."""
import csv
import dataclasses
import json
import math
import os
import time

import torch
from tqdm import tqdm

from attacks import PGD, training_attack
from config import RunConfig
from datasets.assembly import train_dataset
from datasets.generators import get_generator
from engine.common import loader, log, resolve_device
from engine.report_page import save_training_plot
from methods import get_method, stored_model_options
from utils.checkpoint import load_state, read_checkpoint, save_checkpoint
from utils.distributed import GradientAveraging, ShardedShuffle, barrier, is_main, same_on_all_ranks, sum_over_ranks
from utils.errors import UserError
from utils.io import atomic_write, ensure_writable_dir, write_json
from utils.seed import rng_state, seed_everything, set_rng_state


PLOT_EVERY = 30.0


def refuse_to_overwrite(cfg: RunConfig) -> None:
    """A new training run never replaces another run's checkpoints or record (config.json, metrics.json) unless
    asked (--resume or --overwrite), whichever method made them."""
    if cfg.train.resume or cfg.train.overwrite:
        return
    for path, what in ((cfg.final_checkpoint, "a finished model"), (cfg.last_checkpoint, "an unfinished run")):
        if os.path.exists(path):
            raise UserError(f"{path} holds {what}; continue it with --resume, train into a new --output_dir, "
                            f"or replace it with --overwrite")
    record = os.path.join(cfg.output_dir, "config.json")
    if not os.path.exists(record):
        return
    try:
        with open(record) as f:
            other = json.load(f).get("method", "patchguard")
    except (OSError, ValueError, AttributeError):
        other = "unknown"
    results = os.path.exists(os.path.join(cfg.output_dir, "metrics.json"))
    if other != cfg.method or results:
        raise UserError(f"{cfg.output_dir} holds the record of a {other} run (config.json"
                        f"{', metrics.json' if results else ''}); train into a new --output_dir, or replace it "
                        f"with --overwrite")


def run_train(cfg: RunConfig) -> str:
    """Train and return the path of the final checkpoint."""
    refuse_to_overwrite(cfg)
    ensure_writable_dir(cfg.output_dir)
    ensure_writable_dir(cfg.checkpoints)
    if is_main():
        write_json(os.path.join(cfg.output_dir, "config.json"), cfg.as_dict())
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run_cfg = cfg  # as asked; `cfg` may switch to PGD training if single-step training overfits catastrophically
    method = get_method(cfg.method)
    model = method.build_model(cfg.method_options.model, cfg.train.backbone_weights).to(device)
    dataset = train_dataset(cfg, model.cfg.image_size, model.patch_size)
    generator = get_generator(cfg.data.pseudo_anomaly)
    t = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    step_optimizer = GradientAveraging(optimizer)  # plain AdamW in one process; averages gradients under torchrun
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs, eta_min=t.lr * t.lr_decay_factor)
    last_path = cfg.last_checkpoint
    start_epoch = 0
    if t.resume:
        ckpt = read_checkpoint(last_path)
        if stored_model_options(ckpt.get("config", {})) != cfg.as_dict()["method_options"]["model"]:
            raise UserError(f"{last_path} was trained with another model config; resume with the same options")
        load_state(model, ckpt["model"], last_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        if ckpt.get("switched_to_pgd"):
            cfg = switch_to_pgd(cfg)
        if ckpt.get("saliency") is not None:
            dataset.set_saliency(ckpt["saliency"].numpy())
        start_epoch = ckpt["epoch"] + 1
        log.info("resumed from %s at epoch %d", last_path, start_epoch + 1)
    log.info("%s model: %s at %dpx, %d patches, %.1fM parameters; device %s", method.name, type(model).__name__,
             model.cfg.image_size, model.num_patches, sum(p.numel() for p in model.parameters()) / 1e6, device)
    if t.adv_train:  # after a resume: the attack training goes on with (PGD if the guard switched to it)
        log.info("training attack: %r", training_attack(model, cfg.train, method.attack_loss))
    else:
        log.info("training attack: none (clean training: the method's default, --no_adv_train, --step_train 0 "
                 "or --epsilon_train 0)")

    history_path = os.path.join(cfg.output_dir, "train.csv")
    plotted = 0.0  # plots/training.png is redrawn at most every PLOT_EVERY seconds, and after the last epoch
    sampler = ShardedShuffle(len(dataset), cfg.seed * 100003 + start_epoch, start_epoch, tagged=True)
    batches = loader(dataset, cfg.data.train_batch_size, cfg.data.num_workers, sampler=sampler, persistent=True)
    epochs = tqdm(range(start_epoch, t.epochs), desc="epochs", disable=not cfg.tqdm, initial=start_epoch,
                  total=t.epochs, dynamic_ncols=True)
    for epoch in epochs:
        dataset.set_epoch(epoch)
        generator.on_epoch(cfg.data.generator, epoch, dataset, model_attention(method, model, device),
                           cfg.data.train_batch_size)
        sampler.set_epoch(epoch, cfg.seed * 100003 + epoch)  # the workers live on: the epoch travels with the keys
        model.train()
        start, total, count = time.time(), 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, disable=not cfg.tqdm,
                   dynamic_ncols=True)
        for batch in bar:
            loss = method.train_step(model, batch, step_optimizer, cfg, device)
            if not math.isfinite(loss):
                raise UserError(f"loss became {loss} at epoch {epoch + 1}; lower --lr or try --precision fp32")
            total += loss * len(batch["image"])
            count += len(batch["image"])
            bar.set_postfix(loss=f"{loss:.3f}")
        if (cfg.train.adv_train and cfg.train.train_attack != "pgd" and cfg.train.co_guard
                and (epoch + 1) % max(1, cfg.train.co_every) == 0):
            if same_on_all_ranks(catastrophic_overfitting(model, dataset, cfg, method, device, epoch)):
                cfg = switch_to_pgd(cfg)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        total, count = sum_over_ranks(total, count)
        mean_loss = total / max(count, 1)
        epochs.set_postfix(loss=f"{mean_loss:.3f}")
        if not is_main():
            continue  # rank 0 alone writes
        _append_history(history_path, epoch + 1, mean_loss, lr, time.time() - start)
        if time.time() - plotted >= PLOT_EVERY or epoch + 1 == t.epochs:
            save_training_plot(cfg.output_dir)
            plotted = time.time()
        state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch, rng=rng_state(),
                     switched_to_pgd=cfg.train.train_attack != run_cfg.train.train_attack,
                     saliency=None if dataset.saliency is None else torch.from_numpy(dataset.saliency))
        save_checkpoint(last_path, model, run_cfg.as_dict(), **state)
        if t.save_every and (epoch + 1) % t.save_every == 0:
            save_checkpoint(cfg.checkpoint_file(f"_epoch{epoch + 1:04d}"), model, run_cfg.as_dict(),
                            epoch=epoch)
        if not cfg.tqdm or (epoch + 1) % max(1, t.epochs // 10) == 0 or epoch + 1 == t.epochs:
            log.info("epoch %d/%d  loss %.4f  lr %.2e  %.1fs", epoch + 1, t.epochs, mean_loss, lr, time.time() - start)
    del batches  # its workers end here, not whenever the loader is collected
    dataset.set_epoch(t.epochs)  # a fresh synthetic copy of each training image for the method's statistics
    method.after_training(model, loader(dataset, cfg.data.train_batch_size, cfg.data.num_workers), cfg, device)
    if is_main():
        save_checkpoint(cfg.final_checkpoint, model, run_cfg.as_dict(), epoch=t.epochs - 1)
        log.info("saved %s", cfg.final_checkpoint)
    barrier()
    return cfg.final_checkpoint


def catastrophic_overfitting(model, dataset, cfg: RunConfig, method, device, epoch: int, n: int = 8) -> bool:
    """Single-step training's guard: on n training images and their pseudo-anomalies (eval mode), the attack loss
    gained over clean by the training attack and by PGD-10 at the same eps. Catastrophic overfitting = the
    single-step attack stops finding what PGD still finds (PGD's gain > --co_factor x the single step's).
    Each epoch's figures go to robustness.csv."""
    t = cfg.train
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.cat([torch.stack([it["image"] for it in items]), torch.stack([it["pseudo"] for it in items])]).to(device)
    pseudo_labels = torch.stack([it["patch_labels"] for it in items])
    labels = torch.cat([torch.zeros_like(pseudo_labels), pseudo_labels]).to(device)
    loss_fn = method.attack_loss
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean = float(loss_fn(model(x), labels).mean())
    single_attack = training_attack(model, dataclasses.replace(t, attack_mode="eval"), loss_fn)
    pgd_attack = PGD(model, t.epsilon_train, 10, model_mode="eval", loss_fn=loss_fn)
    single_adv, pgd_adv = single_attack(x, labels), pgd_attack(x, labels)  # attacks need gradients
    with torch.no_grad():
        single = float(loss_fn(model(single_adv), labels).mean())
        pgd = float(loss_fn(model(pgd_adv), labels).mean())
    model.train(was_training)
    single_gain, pgd_gain = single - clean, pgd - clean
    overfit = pgd_gain > t.co_factor * max(single_gain, 1e-6)
    if is_main():
        append_epoch_row(os.path.join(cfg.output_dir, "robustness.csv"),
                         ["epoch", "clean_loss", "single_step_loss", "pgd10_loss", "pgd_gain_over_single_gain"],
                         [epoch + 1, f"{clean:.5f}", f"{single:.5f}", f"{pgd:.5f}",
                          f"{pgd_gain / max(single_gain, 1e-6):.3f}"])
    if overfit:
        log.warning("catastrophic overfitting at epoch %d: PGD-10 gains %.4f on training images, %s only %.4f; "
                    "training goes on with PGD-%d", epoch + 1, pgd_gain, t.train_attack, single_gain, t.step_train)
    return overfit


def switch_to_pgd(cfg: RunConfig) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_attack="pgd",
                                                              step_train=max(cfg.train.step_train, 1)))


def model_attention(method, model, device):
    """The model's attention saliency as the generators' hook wants it: CPU images in, CPU (B, N) maps out, the
    model in eval mode while it looks."""
    def attention(images, layer_reduce: str, head_reduce: str):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return method.saliency(model, images.to(device), layer_reduce, head_reduce).cpu()
        finally:
            model.train(was_training)
    return attention


def _append_history(path: str, epoch: int, loss: float, lr: float, seconds: float) -> None:
    append_epoch_row(path, ["epoch", "loss", "lr", "seconds"], [epoch, f"{loss:.6f}", f"{lr:.6e}", f"{seconds:.2f}"])


def append_epoch_row(path: str, header: list, row: list) -> None:
    """Rewrite a per-epoch CSV atomically with `row` (row[0] = its 1-based epoch) appended; rows of that epoch and
    later (redone after a resume) are dropped first."""
    epoch, rows = row[0], []
    if os.path.exists(path) and epoch > 1:
        with open(path) as f:
            rows = [r for r in csv.reader(f)][1:]
        rows = [r for r in rows if int(r[0]) < epoch]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows + [row])
    atomic_write(path, write)
