"""Shared run plumbing: device, data loaders, logging."""
import logging
import os
import sys

import torch
from torch.utils.data import DataLoader

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


def loader(dataset, batch_size: int, num_workers: int, shuffle: bool = False, generator=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, persistent_workers=False, drop_last=False)
