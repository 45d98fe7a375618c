"""Heatmap pictures: image with its mask, clean heatmap, attacked image and its heatmap, one PNG per image."""
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from attacks import PGD  # noqa: E402
from engine.common import loader, log, resolve_device, test_dataset  # noqa: E402
from engine.evaluate import checkpoint_path, predict  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.config import RunConfig  # noqa: E402
from utils.io import atomic_write  # noqa: E402


def pick_indices(labels, n: int):
    """Up to n images, anomalous and normal alternately, spread over the test set."""
    anomalous = [i for i, y in enumerate(labels) if y]
    normal = [i for i, y in enumerate(labels) if not y]
    n_anom = min(len(anomalous), max(n - n // 3, n - len(normal)))
    pick = lambda idx, k: [idx[int(j)] for j in np.linspace(0, len(idx) - 1, k)] if k > 0 else []
    return sorted(set(pick(anomalous, n_anom) + pick(normal, min(len(normal), n - n_anom))))


def run_visualization(cfg: RunConfig) -> str:
    device = resolve_device(cfg.device)
    model, _ = load_model(checkpoint_path(cfg), cfg.model)
    model.to(device).eval()
    dataset = test_dataset(cfg, model.cfg.image_size, model.patch_size)
    indices = pick_indices([s.label for s in dataset.samples], cfg.eval.num_visualization)
    batches = loader(Subset(dataset, indices), cfg.data.test_batch_size, cfg.data.num_workers)
    e = cfg.eval
    attack = PGD(model, e.epsilon_visualization, e.step_visualization, model_mode="eval", seed=cfg.seed)
    clean = predict(model, batches, device, cfg.bf16, show=False)
    adv = predict(model, batches, device, cfg.bf16, attack, show=False, keep_images=True)
    clean_maps, adv_maps = clean["maps"], adv["maps"]
    # one colour scale for every picture, so a normal image looks normal next to an anomalous one
    lo, hi = np.percentile(clean_maps, 1), np.percentile(np.concatenate([clean_maps, adv_maps]), 99.5)
    out_dir = os.path.join(cfg.output_dir, "visualization")
    for k, i in enumerate(indices):
        sample = dataset.samples[i]
        image = dataset[i]["image"].permute(1, 2, 0).numpy()
        attacked = adv["images"][k].permute(1, 2, 0).numpy()
        name = f"{k:03d}_{sample.defect}_{os.path.splitext(os.path.basename(sample.image))[0]}.png"
        _save_panel(os.path.join(out_dir, name), image, clean["masks"][k], clean_maps[k], attacked, adv_maps[k],
                    lo, hi, clean["scores"][k], adv["scores"][k], clean["labels"][k], attack)
    log.info("wrote %d pictures to %s (%r)", len(indices), out_dir, attack)
    return out_dir


def _save_panel(path, image, mask, clean_map, adv, adv_map, lo, hi, clean_score, adv_score, label, attack):
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    axes[0].imshow(image)
    axes[0].set_title("anomalous" if label else "normal")
    axes[1].imshow(image)
    if mask.any():
        axes[1].contour(mask, levels=[0.5], colors="lime", linewidths=1)
    axes[1].set_title("ground truth")
    axes[2].imshow(clean_map, cmap="jet", vmin=lo, vmax=hi)
    axes[2].set_title(f"clean, score {clean_score:.2f}")
    axes[3].imshow(np.clip(adv, 0, 1))
    axes[3].set_title(f"PGD-{attack.steps} eps {attack.eps * 255:g}/255")
    im = axes[4].imshow(adv_map, cmap="jet", vmin=lo, vmax=hi)
    axes[4].set_title(f"attacked, score {adv_score:.2f}")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes.tolist(), fraction=0.015, pad=0.01)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight"))
    plt.close(fig)
