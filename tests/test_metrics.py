import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from utils.metrics import auroc


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 5000))
    scores = rng.integers(0, 7, n).astype(np.float32) if seed % 2 else rng.normal(size=n)
    labels = rng.random(n) < 0.3
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auroc_hand_values_and_degenerate():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1], [0, 1, 1]) == pytest.approx(0.5)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    # raw logits and sigmoids give the same AUROC
    z = np.random.default_rng(0).normal(size=100) * 30
    y = np.arange(100) % 3 == 0
    assert auroc(z, y) == pytest.approx(auroc(1 / (1 + np.exp(-z / 30)), y))
