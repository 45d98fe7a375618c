"""Precision: which one runs, decided once from the hardware, and the autocast that applies it.

bf16 autocast covers the model's matrix products; attack steps, projections and losses stay fp32 (they run
outside the model's forward or cast back). bf16 only where the hardware does it natively: a CUDA GPU with bf16
units (compute capability 8.0 or later), or a CPU with AMX or AVX-512 bf16; emulated bf16 on other CPUs measured
about 20x slower than fp32.
"""
import contextlib
import functools
from typing import FrozenSet, Tuple

import torch

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> FrozenSet[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cuda_has_native_bf16() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation argument
        return torch.cuda.get_device_capability()[0] >= 8
    except RuntimeError:  # no usable driver after all
        return False


def choose_precision(requested: str, device_type: str, flags: FrozenSet[str], cuda_bf16: bool) -> Tuple[str, str]:
    """(precision that runs, why), from what was asked and the hardware facts given."""
    if device_type == "cuda":
        native, where = cuda_bf16, "this GPU " + ("has" if cuda_bf16 else "has no") + " native bf16"
    else:
        found = sorted(set(NATIVE_CPU_FLAGS) & set(flags))
        native = bool(found)
        where = f"this CPU has native bf16 ({', '.join(found)})" if found else \
            "this CPU has no native bf16 (no amx_bf16 / avx512_bf16 flag)"
    if requested == "fp32":
        return "fp32", "--precision fp32"
    if requested == "bf16":
        return ("bf16", f"--precision bf16; {where}") if native else \
            ("fp32", f"--precision bf16 asked, but {where}: emulated bf16 is about 20x slower, so fp32 runs")
    return ("bf16" if native else "fp32"), f"--precision auto: {where}"


def resolve_precision(requested: str, device: str) -> Tuple[str, str]:
    """choose_precision with this machine's facts (device "cuda" falls back to the CPU when there is no GPU)."""
    device_type = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    return choose_precision(requested, device_type, cpu_flags() if device_type == "cpu" else frozenset(),
                            cuda_has_native_bf16() if device_type == "cuda" else False)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast of the model's matrix products when the run's precision is bf16 (decided beforehand)."""
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
