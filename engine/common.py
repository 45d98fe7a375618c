"""Shared run plumbing: device, autocast, data loaders, logging."""
import contextlib
import logging
import os
import sys

import torch
from torch.utils.data import DataLoader

from datasets import registry
from datasets.dataset import AnomalyDataset
from datasets.pseudo_anomaly import PseudoAnomalyGenerator
from datasets.samples import make_samples
from utils.config import RunConfig

log = logging.getLogger("patchguard")


def setup_logging(output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(output_dir, "log.txt"))):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.propagate = False


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        log.info("CUDA is not available: running on the CPU")
        return torch.device("cpu")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_dataset(cfg: RunConfig, patch_size: int) -> AnomalyDataset:
    d = cfg.data
    samples = make_samples(d.dataset, d.dataset_dir, d.class_name, "train", d.foreground_dir)
    whole = d.foreground == "none" or registry.uses_whole_image(d.dataset, d.class_name)
    min_size = d.min_patch_size or registry.min_patch_size(d.dataset, d.class_name)
    n_fg = sum(s.foreground is not None for s in samples)
    log.info("train: %d normal images; foreground masks: %s; pseudo-anomaly min size %d px", len(samples),
             "whole image" if whole or not n_fg else f"{n_fg}/{len(samples)}", min_size)
    return AnomalyDataset(samples, cfg.model.image_size, patch_size, PseudoAnomalyGenerator(min_size),
                          whole_image_foreground=whole, seed=cfg.seed)


def test_dataset(cfg: RunConfig, image_size: int, patch_size: int) -> AnomalyDataset:
    d = cfg.data
    samples = make_samples(d.dataset, d.dataset_dir, d.class_name, "test")
    return AnomalyDataset(samples, image_size, patch_size)


def loader(dataset, batch_size: int, num_workers: int, shuffle: bool = False, generator=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, persistent_workers=False, drop_last=False)
