"""--class_name all: every class of the dataset in turn, then one summary table (CSV and markdown)."""
import csv
import io
import os

from datasets.samples import available_classes
from engine.common import log, setup_logging
from engine.evaluate import setting_label
from utils.config import RunConfig
from utils.errors import UserError
from utils.io import atomic_write

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def run_all_classes(cfg: RunConfig, run_class) -> None:
    classes = available_classes(cfg.data.dataset, cfg.data.dataset_dir)
    rows, failed = [], []
    for name in classes:
        class_cfg = cfg.for_class(name, os.path.join(cfg.output_dir, name))
        try:
            results = run_class(class_cfg)
        except UserError as e:  # one broken class does not stop the others
            failed.append(f"{name}: {e}")
            continue
        for s in results.get("settings", []):
            rows.append({"class": name, "setting": setting_label(s), **{m: s.get(m) for m in METRICS}})
    setup_logging(cfg.output_dir)
    if rows:
        write_summary(cfg.output_dir, rows)
    if failed:
        raise UserError(f"{len(failed)} of {len(classes)} classes failed: " + " | ".join(failed))


def write_summary(out_dir: str, rows: list) -> None:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    classes = list(dict.fromkeys(r["class"] for r in rows))
    metrics = [m for m in METRICS if any(r[m] is not None for r in rows)]
    table = {(r["class"], r["setting"]): r for r in rows}
    header = ["class"] + [f"{s} {m}" for s in settings for m in metrics]
    lines = []
    for c in classes + ["mean"]:
        values = []
        for s in settings:
            for m in metrics:
                if c == "mean":
                    v = [table[(k, s)][m] for k in classes if (k, s) in table and table[(k, s)][m] is not None]
                    values.append(sum(v) / len(v) if v else None)
                else:
                    values.append(table.get((c, s), {}).get(m))
        lines.append([c] + ["" if v is None else f"{v:.4f}" for v in values])
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + lines)
    atomic_write(os.path.join(out_dir, "summary.csv"), lambda tmp: open(tmp, "w").write(buf.getvalue()))
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in lines]
    atomic_write(os.path.join(out_dir, "summary.md"), lambda tmp: open(tmp, "w").write("\n".join(md) + "\n"))
    log.info("summary over %d classes:\n%s", len(classes), "\n".join(md))
