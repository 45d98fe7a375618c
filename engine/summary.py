"""--class_name all: every class of the dataset in turn, then one summary table (CSV and markdown)."""
import csv
import io
import os

from config import RunConfig
from datasets.samples import available_classes
from engine.common import log, setup_logging
from engine.reporting import setting_label
from utils.errors import UserError
from utils.io import atomic_write

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def run_all_classes(cfg: RunConfig, run_class) -> None:
    classes = available_classes(cfg.data.dataset, cfg.data.dataset_dir)
    rows, failed = [], []
    if len(cfg.devices) > 1:
        setup_logging(cfg.output_dir)
        outcomes = sorted(run_on_devices(cfg, classes), key=lambda item: classes.index(item[0]))
    else:
        outcomes = ((name, _run_here(cfg, name, run_class)) for name in classes)
    for name, results in outcomes:
        if isinstance(results, str):  # one broken class does not stop the others
            failed.append(f"{name}: {results}")
            continue
        for s in results.get("settings", []):
            rows.append({"class": name, "setting": setting_label(s), **{m: s.get(m) for m in METRICS}})
    setup_logging(cfg.output_dir)
    if rows:
        write_summary(cfg.output_dir, rows)
    from engine.report_page import write_summary_report
    log.info("report: %s", write_summary_report(cfg.output_dir, classes))
    if failed:
        raise UserError(f"{len(failed)} of {len(classes)} classes failed: " + " | ".join(failed))


def _run_here(cfg: RunConfig, name: str, run_class):
    try:
        return run_class(cfg.for_class(name, os.path.join(cfg.output_dir, name)))
    except UserError as e:
        return str(e)


def run_on_devices(cfg: RunConfig, classes):
    """One class per device at a time (`--devices 0 1 ...`), each in its own process with only that GPU visible;
    yields (class, its test results or an error text) as the classes finish."""
    import json
    import subprocess
    import sys
    import time
    from utils.io import write_json
    main_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
    flags = [f for f, on in (("--resume", cfg.train.resume), ("--overwrite", cfg.train.overwrite),
                             ("--recompute", cfg.eval.recompute)) if on]
    pending, running, free = list(classes), {}, list(cfg.devices)
    while pending or running:
        while pending and free:
            name, device = pending.pop(0), free.pop(0)
            class_cfg = cfg.for_class(name, os.path.join(cfg.output_dir, name))
            os.makedirs(class_cfg.output_dir, exist_ok=True)
            launch = os.path.join(class_cfg.output_dir, "launch_config.json")
            write_json(launch, class_cfg.as_dict())
            out = open(os.path.join(class_cfg.output_dir, "launch.log"), "w")
            proc = subprocess.Popen([sys.executable, main_py, "--config", launch, "--mode", cfg.mode, *flags],
                                    env=dict(os.environ, CUDA_VISIBLE_DEVICES=str(device)), stdout=out,
                                    stderr=subprocess.STDOUT)
            running[name] = (proc, device, out, class_cfg.output_dir)
            log.info("class %s on device %s (log: %s)", name, device, out.name)
        time.sleep(1)
        for name, (proc, device, out, out_dir) in list(running.items()):
            if proc.poll() is None:
                continue
            out.close()
            del running[name]
            free.append(device)
            metrics = os.path.join(out_dir, "metrics.json")
            if proc.returncode:
                yield name, f"exit code {proc.returncode}, see {out.name}"
            elif os.path.isfile(metrics) and cfg.mode in ("test", "all"):
                with open(metrics) as f:
                    yield name, json.load(f)
            else:
                yield name, {}


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
        if not isinstance(runs[-1], dict):
            raise UserError(f"{path} is not a run's metrics.json (expected a JSON object)")
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
            try:
                with open(path) as f:
                    configs[d] = flat(json.load(f))
            except (OSError, ValueError, AttributeError) as e:
                raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                                f"(expected the run's own config.json)") from None
    if len(configs) > 1:
        first, *rest = configs.items()
        differing = sorted({k for _, c in rest for k in set(c) | set(first[1]) if c.get(k) != first[1].get(k)})
        if differing:
            raise UserError(f"runs differ in more than the seed ({', '.join(differing[:6])}): "
                            f"a mean ± std over them would mix settings")
