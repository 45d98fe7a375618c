"""A run at a glance: <run>/report.html, rewritten whenever a mode finishes, and plots/training.png while training.

The page reads only the run folder's own files (config.json, train.csv, robustness.csv, metrics.json, plots/,
visualization/, export/, predictions/) and links them by relative paths, so it opens from the file system with no
server and no external scripts. Its one inline script counts the pictures that loaded (data-images-loaded on
<body>), which the browser test reads.
"""
import csv
import html
import json
import os
from typing import List, Optional

from engine.reporting import setting_label
from utils.figures import pyplot, save_figure
from utils.io import atomic_write

COLUMNS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"),
           ("image F1max", "image_f1_max"))
STYLE = """body { font-family: sans-serif; margin: 1.5em; max-width: 1300px; }
table { border-collapse: collapse; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; } tr.sub td { color: #666; font-size: 90%; }
img.plot { max-width: 48%; margin: 4px; } img.thumb { width: min(1100px, 95%); margin: 3px 0; display: block; }
.flat { color: #b00; font-weight: bold; } pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 85%; }"""
COUNT_IMAGES = """<script>window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});</script>"""


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_csv(path: str) -> List[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def save_training_plot(run_dir: str) -> Optional[str]:
    """plots/training.png from train.csv: loss and learning rate per epoch, and (single-step training) the
    guard's PGD-10 / single-step gain ratio per check."""
    history = _read_csv(os.path.join(run_dir, "train.csv"))
    if not history:
        return None
    guard = _read_csv(os.path.join(run_dir, "robustness.csv"))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if guard else 2, figsize=(13 if guard else 9, 3.2))
    epochs = [int(r["epoch"]) for r in history]
    axes[0].plot(epochs, [float(r["loss"]) for r in history], marker=".")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    axes[1].plot(epochs, [float(r["lr"]) for r in history], color="tab:orange")
    axes[1].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    if guard:
        axes[2].plot([int(r["epoch"]) for r in guard], [float(r["pgd_gain_over_single_gain"]) for r in guard],
                     marker="o", color="tab:red")
        axes[2].set(xlabel="epoch", ylabel="PGD-10 gain / single-step gain", title="catastrophic-overfitting guard")
    fig.tight_layout()
    path = os.path.join(run_dir, "plots", "training.png")
    save_figure(fig, path, dpi=80, tight=False)
    return path


def _metrics_table(metrics: dict) -> str:
    head = "<tr><th>setting</th>" + "".join(f"<th>{c}</th>" for c, _ in COLUMNS) + "<th>seconds</th></tr>"
    rows = []
    for s in metrics.get("settings", []):
        cells = "".join(f"<td>{s[k]:.4f}</td>" if isinstance(s.get(k), (int, float)) else "<td>n/a</td>"
                        for _, k in COLUMNS)
        rows.append(f'<tr class="setting"><td>{html.escape(setting_label(s))}</td>{cells}'
                    f"<td>{s.get('seconds', 0):.1f}</td></tr>")
        for group, m in sorted(s.get("subgroups", {}).items()):
            cells = "".join(f"<td>{m[k]:.4f}</td>" if isinstance(m.get(k), (int, float)) else "<td>n/a</td>"
                            for _, k in COLUMNS)
            rows.append(f'<tr class="sub"><td>&nbsp;&nbsp;{html.escape(str(group))}</td>{cells}<td></td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(run_dir: str) -> Optional[str]:
    """report.html of one run folder (nothing when the folder holds no run yet)."""
    config = _read_json(os.path.join(run_dir, "config.json"))
    metrics = _read_json(os.path.join(run_dir, "metrics.json"))
    if config is None and metrics is None:
        return None
    data = (config or {}).get("data", {})
    title = f"{config.get('method', '') if config else metrics.get('method', '')} on " \
            f"{data.get('dataset', metrics and metrics.get('dataset'))} / " \
            f"{data.get('class_name', metrics and metrics.get('class_name'))}"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    history, plot = os.path.join(run_dir, "train.csv"), os.path.join(run_dir, "plots", "training.png")
    if os.path.exists(history) and (not os.path.exists(plot) or os.path.getmtime(plot) < os.path.getmtime(history)):
        save_training_plot(run_dir)  # training draws it as it goes; only a stale or missing one is redrawn
    plots = [p for p in ("training.png", "auroc_vs_eps.png", "auroc_vs_steps.png")
             if os.path.exists(os.path.join(run_dir, "plots", p))]
    if "training.png" in plots:
        parts.append('<h2>Training</h2><img class="plot" src="plots/training.png" alt="training curve">'
                     '<p><a href="train.csv">train.csv</a></p>')
    if metrics:
        parts.append(f"<h2>Results</h2><p>checkpoint {html.escape(str(metrics.get('checkpoint')))}; "
                     f"{metrics.get('num_images')} test images ({metrics.get('num_anomalous')} anomalous); "
                     f'<a href="metrics.json">metrics.json</a></p>' + _metrics_table(metrics))
        sweeps = [p for p in plots if p != "training.png"]
        parts += [f'<img class="plot" src="plots/{p}" alt="{p}">' for p in sweeps]
    pictures = _read_json(os.path.join(run_dir, "visualization", "pictures.json"))
    if pictures:
        flat = '<p class="flat">Flat map: the test maps span almost nothing; drawn on a fixed range, not ' \
               'stretched.</p>' if pictures.get("flat") else ""
        thumbs = "".join(f'<a href="visualization/{html.escape(e["file"])}"><img class="thumb" '
                         f'src="visualization/{html.escape(e["file"])}" alt="{html.escape(e["file"])}"></a>'
                         for e in pictures.get("entries", [])[:6])
        extra = "".join(f'<a href="visualization/{html.escape(p)}"><img class="plot" '
                        f'src="visualization/{html.escape(p)}" alt="{html.escape(p)}"></a>'
                        for p in pictures.get("extra", []))
        parts.append(f'<h2>Heatmaps</h2>{flat}<p><a href="visualization/index.html">all {len(pictures["entries"])} '
                     f"pictures</a> (attack: {html.escape(pictures.get('attack', ''))})</p>{thumbs}{extra}")
    if os.path.exists(os.path.join(run_dir, "export", "model.onnx")):
        parts.append('<h2>Export</h2><p><a href="export/model.onnx">export/model.onnx</a> (ONNX; scores and '
                     "smoothed maps; see log.txt for its agreement with PyTorch)</p>")
    if os.path.exists(os.path.join(run_dir, "predictions", "predictions.csv")):
        parts.append('<h2>Predictions</h2><p><a href="predictions/predictions.csv">predictions.csv</a></p>')
    if config:
        parts.append("<h2>Config</h2><details><summary>config.json</summary><pre>"
                     f"{html.escape(json.dumps(config, indent=1))}</pre></details>")
    return _write_page(os.path.join(run_dir, "report.html"), title, "\n".join(parts))


def write_summary_report(out_dir: str, classes: List[str]) -> str:
    """report.html one level up (--class_name all): the summary table with links to each class's report."""
    rows = _read_csv(os.path.join(out_dir, "summary.csv"))
    table = ""
    if rows:
        header = list(rows[0])
        cells = []
        for r in rows:
            name = r[header[0]]
            link = f'<a href="{html.escape(name)}/report.html">{html.escape(name)}</a>' \
                if os.path.exists(os.path.join(out_dir, name, "report.html")) else html.escape(name)
            cells.append(f"<tr><td>{link}</td>" + "".join(f"<td>{html.escape(r[h])}</td>" for h in header[1:])
                         + "</tr>")
        table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(cells) + \
            "</table>"
    links = "".join(f'<li><a href="{html.escape(c)}/report.html">{html.escape(c)}</a></li>' for c in classes
                    if os.path.exists(os.path.join(out_dir, c, "report.html")))
    body = f"<h1>All classes</h1>{table}<h2>Class reports</h2><ul>{links}</ul>"
    return _write_page(os.path.join(out_dir, "report.html"), "all classes", body)


def _write_page(path: str, title: str, body: str) -> str:
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style>{COUNT_IMAGES}</head><body>\n{body}\n</body></html>\n")
    atomic_write(path, lambda tmp: open(tmp, "w").write(page))
    return path
