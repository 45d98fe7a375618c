"""Matplotlib without a screen, and figures written atomically (a failed run never leaves half a PNG)."""
from utils.io import atomic_write


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 80, tight: bool = True) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None))
    pyplot().close(fig)
