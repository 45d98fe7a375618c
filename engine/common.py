"""Shared run plumbing: device, data loaders, logging."""
import logging
import os
import sys

import torch
from torch.utils.data import DataLoader

from utils.distributed import is_main, local_device, rank

log = logging.getLogger("patchguard")


def setup_logging(output_dir: str) -> None:
    """Log to stdout and <output_dir>/log.txt; other ranks of a torchrun job print warnings only."""
    os.makedirs(output_dir, exist_ok=True)
    main = is_main()
    log.setLevel(logging.INFO if main else logging.WARNING)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s" if main else f"%(asctime)s [rank {rank()}] %(message)s",
                            "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if main:
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt")))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.propagate = False


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        log.info("CUDA is not available: running on the CPU")
        return torch.device("cpu")
    return local_device(name)


def loader(dataset, batch_size: int, num_workers: int, sampler=None, persistent: bool = False) -> DataLoader:
    """`persistent`: the workers live across epochs (no start-up per epoch); what changes per epoch must then
    reach them through the sampler's keys or shared memory (training: ShardedShuffle(tagged=True))."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=persistent and num_workers > 0,
                      drop_last=False)
