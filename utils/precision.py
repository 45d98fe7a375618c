"""Autocast: bf16 for the model's matrix products on CUDA, or on CPUs with native bf16 (AMX / AVX-512 bf16); fp32
everywhere else. Attacks keep their sign steps and projections in fp32 (they run outside the model's forward)."""
import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AMX or AVX-512 bf16); else bf16 would be emulated, slowly."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" amx_bf16", " avx512_bf16"))


def bf16_applies(device: torch.device, bf16: bool) -> bool:
    return bf16 and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def autocast(device: torch.device, bf16: bool):
    if bf16_applies(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
