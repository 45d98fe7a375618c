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
