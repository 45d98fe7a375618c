"""Several processes, one model: `torchrun --nproc_per_node N main.py --mode train ...`.

gloo on the CPU, NCCL on GPUs. Each rank trains on its shard of every global batch (the shards of one global batch
together are exactly the single-process batch of the same size), gradients are averaged before each optimiser
step, rank 0 alone writes checkpoints, logs and results. Evaluation shards the test set and gathers scores and
maps before the metrics. With no torchrun environment everything here is a no-op.
"""
import os

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from utils.errors import UserError


def init_from_env(device: str, devices=()) -> None:
    """Join the torchrun job this process belongs to (no-op without one). A bad launch is a one-line error before
    any collective. An error on one rank ends that process with exit code 2, and torchrun then stops the others
    (its default), so no rank waits in a collective until the backend's timeout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={world} is set but {', '.join(missing)} not: start the job with "
                        f"torchrun --nproc_per_node N main.py ... (or set RANK, MASTER_ADDR and MASTER_PORT)")
    if devices:
        raise UserError("--devices starts one process per GPU itself: use it without torchrun (torchrun trains one "
                        "model on several GPUs; --devices trains several classes at once)")
    cuda = device == "cuda" and torch.cuda.is_available()
    if cuda:
        local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= count:
            raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', local_rank + 1)} processes on "
                            f"this node but it has {count} GPU(s): use --nproc_per_node {count} or fewer")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device(name: str) -> torch.device:
    if name == "cuda" and torch.cuda.is_available() and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


class ShardedShuffle(Sampler):
    """The single-process shuffle (randperm with a per-epoch seed), dealt out round-robin to the ranks: with a
    per-rank batch b, global batch k over N ranks = single-process batch k of size N * b. Padded by wrapping so
    every rank gets the same number of samples. `tagged`: yields (index, epoch), so DataLoader workers that live
    across epochs know the epoch; `set_epoch` moves a sampler that lives across epochs on."""

    def __init__(self, size: int, seed: int, epoch: int, tagged: bool = False):
        self.size, self.seed, self.epoch, self.tagged = size, seed, epoch, tagged

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = epoch, seed

    def _indices(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)).tolist()
        world = world_size()
        order += order[:(-len(order)) % world]
        return order[rank()::world]

    def __iter__(self):
        indices = self._indices()
        return iter([(i, self.epoch) for i in indices] if self.tagged else indices)

    def __len__(self) -> int:
        return -(-self.size // world_size())


class GradientAveraging:
    """An optimiser whose step() first averages the gradients over the ranks (then it is the plain optimiser)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        world = world_size()
        if world > 1:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
        self.optimizer.step()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def sum_over_ranks(*values: float):
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(t.tolist())


def same_on_all_ranks(value):
    """Rank 0's value everywhere (decisions that must not diverge)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_in_order(part: dict, indices) -> dict:
    """Each rank's arrays for its `indices` -> every rank holds the arrays of all indices in index order."""
    if world_size() == 1:
        return part
    import numpy as np
    parts = [None] * world_size()
    dist.all_gather_object(parts, (list(indices), part))
    order = np.argsort(np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in parts]), kind="stable")
    out = {}
    for key, value in part.items():
        if isinstance(value, np.ndarray):
            out[key] = np.concatenate([p[key] for _, p in parts])[order]
        elif key == "report":  # attack checks: merged over the ranks
            reports = [p[key] for _, p in parts if p[key] is not None]
            out[key] = reports[0] if reports else None
            for r in reports[1:]:
                out[key] = out[key].merge(r)
        else:
            out[key] = value
    return out


def default_workers(device: str, class_processes: int = 0) -> int:
    """Workers when --num_workers is not given (bench/data.py measures the data side).

    CPU: 2; the model's own compute needs the cores, and a sample's pseudo-anomaly costs under 1% of its PGD-10
    training there. GPU: one 224 px sample takes ~11 ms on a core, and an H200 trains on one in 4 ms (FGSM-RS,
    bf16) to 26 ms (PGD-10, fp32), so: every core this process may use but one (the one feeding the GPU), divided
    among this node's GPU processes (torchrun ranks or --devices classes), at most 8 (more only add memory and
    start-up time; the training workers start once and live across epochs)."""
    if device != "cuda" or not torch.cuda.is_available():
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = class_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores // max(1, processes) - 1))
