"""Pictures people compare: one composite PNG per test image and an HTML page to browse them.

Heatmaps share one colour scale over the whole test set (from the clean maps), so a normal image looks normal
next to an anomalous one (the official code min-max normalises each map on its own).
"""
import html
import os

import numpy as np
from torch.utils.data import Subset

from config import RunConfig
from datasets.assembly import test_dataset
from engine.common import loader, log
from engine.report_page import COUNT_IMAGES
from engine.loading import load_for_evaluation
from engine.scoring import make_attack, score_loader
from utils.figures import FLAT_RANGE, heat_range, pyplot, save_figure
from utils.io import atomic_write, write_json


def pick_indices(labels, n: int):
    """Up to n images (all when n <= 0), anomalous and normal, spread over the test set."""
    if n <= 0 or n >= len(labels):
        return list(range(len(labels)))
    anomalous = [i for i, y in enumerate(labels) if y]
    normal = [i for i, y in enumerate(labels) if not y]
    n_anom = min(len(anomalous), max(n - n // 3, n - len(normal)))

    def spread(idx, k):
        return [idx[int(j)] for j in np.linspace(0, len(idx) - 1, k)] if k > 0 else []
    return sorted(set(spread(anomalous, n_anom) + spread(normal, min(len(normal), n - n_anom))))


def run_visualization(cfg: RunConfig) -> str:
    method, model, device = load_for_evaluation(cfg)
    dataset = test_dataset(cfg, model.cfg.image_size, model.patch_size)
    all_batches = loader(dataset, cfg.data.test_batch_size, cfg.data.num_workers)
    clean_all = score_loader(method, model, all_batches, device, cfg.bf16, show=False)
    lo, hi, flat = heat_range(clean_all["maps"])  # one colour range over the test set, from the clean maps
    if flat:
        log.warning("flat map: the clean maps of the test set span less than %g; drawn on a fixed range, not "
                    "stretched", FLAT_RANGE)
    indices = pick_indices([s.label for s in dataset.samples], cfg.eval.num_visualization)
    e = cfg.eval
    attack = None
    if e.adv_test and e.step_visualization > 0 and e.epsilon_visualization > 0:
        attack = make_attack(e.attack[0], method, model, e.epsilon_visualization, e.step_visualization, cfg)
    else:
        log.info("pictures without an attacked column (--no_adv_test, --step_visualization 0 or "
                 "--epsilon_visualization 0)")
    batches = loader(Subset(dataset, indices), cfg.data.test_batch_size, cfg.data.num_workers)
    adv = score_loader(method, model, batches, device, cfg.bf16, attack, show=cfg.tqdm, keep_images=True,
                       desc="attacking", target=e.attack_target)
    out_dir = os.path.join(cfg.output_dir, "visualization")
    entries = []
    for k, i in enumerate(indices):
        sample = dataset.samples[i]
        stem = os.path.splitext(os.path.basename(sample.image))[0]
        name = f"{k:04d}_{sample.defect}_{stem}.png"
        attacked = attack is not None and cfg.eval.attack_target in ("both", ("normal", "anomalous")[sample.label])
        save_composite(os.path.join(out_dir, name), dataset.images[i], clean_all["masks"][i], clean_all["maps"][i],
                       adv["images"][k].permute(1, 2, 0).numpy(), adv["maps"][k], (lo, hi),
                       clean_all["scores"][i], adv["scores"][k], sample.label, attack if attacked else None, flat)
        entries.append({"file": name, "image": sample.image, "defect": sample.defect, "label": int(sample.label),
                        "clean_score": float(clean_all["scores"][i]),
                        "attacked_score": float(adv["scores"][k]) if attacked else None})
    described = repr(attack) if attack is None else f"{attack!r} on {cfg.eval.attack_target} images"
    write_index(os.path.join(out_dir, "index.html"), entries, cfg, "none" if attack is None else described, flat)
    extra = method.extra_pictures(clean_all, out_dir, cfg.seed)
    write_json(os.path.join(out_dir, "pictures.json"), {"entries": entries, "flat": flat, "attack": described,
                                                         "extra": [os.path.basename(p) for p in extra]})
    log.info("wrote %d pictures and index.html to %s (%r)", len(entries), out_dir, attack)
    return out_dir


def save_composite(path, image, mask, clean_map, attacked, attacked_map, scale, clean_score, attacked_score, label,
                   attack, flat=False):
    """Image, ground truth, clean heatmap and, when `attack` is given, the attacked image and its heatmap."""
    plt = pyplot()
    lo, hi = scale
    fig, axes = plt.subplots(1, 5 if attack is not None else 3, figsize=(15 if attack is not None else 9, 3.4))
    axes[0].imshow(image)
    axes[0].set_title("anomalous" if label else "normal")
    axes[1].imshow(image)
    if mask.any():
        axes[1].contour(mask, levels=[0.5], colors="lime", linewidths=1)
    axes[1].set_title("ground truth" if mask.any() else "ground truth (none)")
    im = axes[2].imshow(clean_map, cmap="jet", vmin=lo, vmax=hi)
    axes[2].set_title(f"clean, score {clean_score:.2f}" + (" (flat map)" if flat else ""))
    if attack is not None:
        axes[3].imshow(np.clip(attacked, 0, 1))
        axes[3].set_title(f"{type(attack).__name__}-{attack.steps} eps {attack.eps * 255:g}/255")
        im = axes[4].imshow(attacked_map, cmap="jet", vmin=lo, vmax=hi)
        axes[4].set_title(f"attacked, score {attacked_score:.2f}" + (" (flat map)" if flat else ""))
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes.tolist(), fraction=0.015, pad=0.01)
    save_figure(fig, path)


def _score(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_index(path: str, entries, cfg: RunConfig, attack: str, flat: bool = False) -> None:
    rows = "\n".join(
        f'<tr class="{"anomalous" if e["label"] else "normal"}"><td>{k}</td>'
        f'<td>{html.escape(e["defect"])}</td><td>{html.escape(os.path.basename(e["image"]))}</td>'
        f'<td>{e["clean_score"]:.3f}</td><td>{_score(e["attacked_score"])}</td>'
        f'<td><a href="{html.escape(e["file"])}"><img src="{html.escape(e["file"])}"></a></td></tr>'
        for k, e in enumerate(entries))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>PatchGuard heatmaps: {html.escape(cfg.data.dataset)} / {html.escape(cfg.data.class_name)}</title>
{COUNT_IMAGES}
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; }}
td, th {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }}
tr.anomalous td:nth-child(2) {{ color: #b00; }} img {{ width: min(900px, 70vw); }}
</style></head><body>
<h1>{html.escape(cfg.data.dataset)} / {html.escape(cfg.data.class_name)}</h1>
<p>{len(entries)} test images; attack: {html.escape(attack)}. Heatmaps share one colour scale over the test set.
{"<strong>Flat map</strong>: the clean maps span almost nothing; drawn on a fixed range, not stretched." if flat else ""}</p>
<table><thead><tr><th>#</th><th>type</th><th>file</th><th>clean score</th><th>attacked score</th><th>picture</th></tr>
</thead><tbody>
{rows}
</tbody></table></body></html>
"""
    atomic_write(path, lambda tmp: open(tmp, "w").write(page))
