"""Reporting test results: row labels, the text table, and the AUROC sweep plots."""
import os

from utils.figures import pyplot, save_figure


def setting_label(s: dict) -> str:
    """e.g. "clean", "PGD-10 eps 8/255", "PGD-10 eps 8/255 + TTA (adaptive attacker)"."""
    label = "clean" if s["attack"] == "none" else f"{s['attack'].upper()}-{s['steps']} eps {s['eps_255']:g}/255"
    if s.get("objective"):
        label += " [min over objectives]" if s["objective"] == "min" else f" [{s['objective']} objective]"
    if s.get("tta"):
        label += " + TTA" + (f" ({s['attacker']} attacker)" if s.get("attacker") else "")
    return label


def format_table(results: dict) -> str:
    cols = [("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"),
            ("img F1max", "image_f1_max")]
    width = max([24] + [len(setting_label(s)) + 2 for s in results["settings"]])
    rows = [f"{'setting':<{width}}" + "".join(f"{c:>13}" for c, _ in cols) + f"{'zero-grad':>10}{'seconds':>9}"]
    for s in results["settings"]:
        vals = "".join(f"{s[k]:>13.4f}" if k in s else f"{'n/a':>13}" for _, k in cols)
        zg = f"{s['checks']['zero_gradient_share']:>10.2f}" if "checks" in s else f"{'':>10}"
        rows.append(f"{setting_label(s):<{width}}{vals}{zg}{s['seconds']:>9.1f}")
        for group, m in sorted(s.get("subgroups", {}).items()):  # e.g. NIH patient sex, as the paper's rows
            rows.append(f"{'  ' + str(group):<{width}}" + "".join(f"{m[k]:>13.4f}" if m.get(k) is not None
                                                                 else f"{'n/a':>13}" for _, k in cols))
    return "\n".join(rows)


def save_sweep_plots(results: dict, out_dir: str) -> None:
    """AUROC against eps (one line per attack and step count) and against steps (per attack and eps)."""
    attacked = [s for s in results["settings"]
                if s["attack"] != "none" and not s.get("tta") and s.get("objective") in (None, "min")]
    clean = results["settings"][0]
    metrics = [m for m in ("image_auroc", "pixel_auroc") if m in clean]
    for x_key, group_key, name in (("eps_255", "steps", "auroc_vs_eps"), ("steps", "eps_255", "auroc_vs_steps")):
        if len({s[x_key] for s in attacked}) < 2:
            continue
        plt = pyplot()
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for (attack, group) in sorted({(s["attack"], s[group_key]) for s in attacked}):
                pts = sorted((s[x_key], s[metric]) for s in attacked if s["attack"] == attack and s[group_key] == group)
                if x_key == "eps_255":
                    pts = [(0.0, clean[metric])] + pts
                label = f"{attack.upper()}-{group}" if group_key == "steps" else f"{attack.upper()} eps {group:g}/255"
                ax.plot(*zip(*pts), marker="o", label=label)
            ax.axhline(clean[metric], color="gray", linestyle=":", label="clean")
            ax.set_xlabel("eps (x/255)" if x_key == "eps_255" else "attack steps")
            if x_key == "steps":
                ax.set_xscale("log")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, os.path.join(out_dir, name + ".png"), dpi=90, tight=False)
