"""Threshold-free detection metrics on raw scores (no sigmoid: AUROC only needs the order)."""
import numpy as np


def auroc(scores, labels) -> float:
    """Exact ROC AUC via the Mann-Whitney rank statistic, ties counted as half (same as scikit-learn).

    Works on flattened pixel maps of a whole test set: one sort, float64 accumulation.
    """
    s = np.asarray(scores, dtype=np.float32).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    # average 1-based rank of each tie group
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], s.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(group_rank, ends - starts)
    pos_rank_sum = ranks[y[order]].sum(dtype=np.float64)
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
