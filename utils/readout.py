"""Read-out options every method shares: they turn outputs into scores and maps and change no weight, so a test
run may override a checkpoint's values."""
from utils.errors import UserError

READOUT_KEYS = ("top_k", "smoothing_sigma", "smoothing_radius")


def readout_given(args) -> dict:
    """The read-out options given on the command line or in a config file (None = not given)."""
    return {k: getattr(args, k) for k in READOUT_KEYS if getattr(args, k, None) is not None}


def check_readout(top_k: int, num_patches: int, image_size: int) -> None:
    if top_k > num_patches:
        raise UserError(f"--top_k {top_k} is more than the {num_patches} patches of a {image_size}px image")
