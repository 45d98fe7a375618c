"""Self-describing checkpoints: weights (official key names) + the run config, written atomically and read
weights-only. methods.load_model rebuilds a model from one (ours, or an official PatchGuard state dict)."""
import os
import pickle
import re

import numpy as np
import torch

from utils.errors import UserError
from utils.io import atomic_write

FORMAT = "patchguard-reimpl/1"
# plain numpy arrays (RNG state in checkpoints written before weights-only loading): rebuilding them runs no code
_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed it
NUMPY_ARRAYS = [_CORE.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def save_checkpoint(path: str, model: torch.nn.Module, config: dict, **extra) -> None:
    payload = {"format": FORMAT, "model": model.state_dict(), "config": config, **extra}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path} (train first, or pass --checkpoint / --checkpoint_dir)")
    try:  # weights only: unpickling arbitrary objects would run code from whoever made the file
        with torch.serialization.safe_globals(NUMPY_ARRAYS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = re.search(r"GLOBAL (\S+)|Unsupported operand \S+|global (\S+)", str(e))
        raise UserError(f"refusing to load {path}: it holds Python objects other than tensors and plain data"
                        f"{f' ({culprit.group(0)})' if culprit else ''}, which could run code when unpickled; "
                        f"only load files from people you trust, re-saved as a plain state dict") from None
    except Exception as e:  # truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a PatchGuard checkpoint (expected a dict)")
    return ckpt


def load_state(model: torch.nn.Module, state: dict, path: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} with other shapes"
                  + (f" (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})" if wrong else ""))
        raise UserError(f"checkpoint {path} is for another architecture than {model.cfg.backbone} at "
                        f"{model.cfg.image_size}px: {detail}; pass the matching --backbone/--image_size")
    model.load_state_dict(state, strict=True)
