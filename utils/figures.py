"""Matplotlib without a screen, and figures written atomically (a failed run never leaves half a PNG)."""
from utils.io import atomic_write


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


FLAT_RANGE = 1e-3  # maps spanning less than this (in their own units) are drawn as flat, not stretched


def heat_range(maps) -> tuple:
    """(lo, hi, flat): one colour range for a set of maps, their 1st to 99.9th percentile. Maps that span less than
    FLAT_RANGE are flat: a fixed range of width 1 around their level, so noise is not stretched into blobs."""
    import numpy as np
    lo, hi = (float(v) for v in np.percentile(maps, [1, 99.9]))
    if float(np.max(maps) - np.min(maps)) < FLAT_RANGE:
        mid = (lo + hi) / 2
        return mid - 0.5, mid + 0.5, True
    return lo, max(hi, lo + 1e-6), False


def save_figure(fig, path: str, dpi: int = 80, tight: bool = True) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None))
    pyplot().close(fig)


def save_tsne(path: str, features, labels, seed: int) -> None:
    """t-SNE of image features, normal vs anomalous."""
    from sklearn.manifold import TSNE
    points = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(features) - 1) / 3)), init="pca",
                  random_state=seed).fit_transform(features)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        ax.scatter(*points[labels == label].T, s=12, c=colour, label=name, alpha=0.8)
    ax.set_title("t-SNE of class-token features (test set)")
    ax.legend()
    ax.set_xticks([])
    ax.set_yticks([])
    save_figure(fig, path)
