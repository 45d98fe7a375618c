"""--class_name all: every class of the dataset in turn, then one summary table (CSV and markdown)."""
import csv
import io
import os

from config import RunConfig
from datasets.samples import available_classes
from engine.common import log, setup_logging
from engine.evaluate import setting_label
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


def summarize_seeds(run_dirs, out_dir: str) -> str:
    """Mean ± std over run directories that differ only in --seed (any method, any dataset): one row per test
    setting (and subgroup), from each run's metrics.json. Writes seeds.csv and seeds.md into out_dir."""
    import json
    import numpy as np
    check_only_seed_differs(run_dirs)
    runs = []
    for d in run_dirs:
        path = os.path.join(d, "metrics.json")
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
    values = {}
    for r in runs:
        for s in r.get("settings", []):
            for group, metrics in [("all", s)] + sorted(s.get("subgroups", {}).items()):
                for m in METRICS:
                    if metrics.get(m) is not None:
                        values.setdefault((setting_label(s), group, m), []).append(metrics[m])
    header = ["setting", "group", "metric", "mean", "std", "runs"]
    lines = [[s, g, m, f"{np.mean(v):.4f}", f"{np.std(v, ddof=1) if len(v) > 1 else 0:.4f}", str(len(v))]
             for (s, g, m), v in values.items()]
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + lines)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "seeds.csv"), lambda tmp: open(tmp, "w").write(buf.getvalue()))
    md = ["| setting | group | metric | mean ± std | runs |", "|---|---|---|---|---|"] + \
         [f"| {s} | {g} | {m} | {mean} ± {std} | {n} |" for s, g, m, mean, std, n in lines]
    atomic_write(os.path.join(out_dir, "seeds.md"), lambda tmp: open(tmp, "w").write("\n".join(md) + "\n"))
    log.info("mean ± std over %d runs:\n%s", len(runs), "\n".join(md))
    return os.path.join(out_dir, "seeds.md")


def check_only_seed_differs(run_dirs) -> None:
    """Refuse to average runs whose config.json differ in anything but the seed and where they were written."""
    import json
    ignored = {"seed", "output_dir", "checkpoint_dir", "checkpoint", "mode", "resume", "overwrite", "recompute",
               "run_dirs", "tqdm"}

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif k not in ignored:
                out[prefix + k] = v
        return out
    configs = {}
    for d in run_dirs:
        path = os.path.join(d, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                configs[d] = flat(json.load(f))
    if len(configs) > 1:
        first, *rest = configs.items()
        differing = sorted({k for _, c in rest for k in set(c) | set(first[1]) if c.get(k) != first[1].get(k)})
        if differing:
            raise UserError(f"runs differ in more than the seed ({', '.join(differing[:6])}): "
                            f"a mean ± std over them would mix settings")
