"""Autocast context: bf16 on CUDA when asked, fp32 everywhere else."""
import contextlib

import torch


def autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
