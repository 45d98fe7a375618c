import math

import pytest
import torch
import torch.nn.functional as F

from losses.patchguard_loss import attention_kl, patchguard_loss


def test_bce_sums_over_patches_and_averages_over_images():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    per_image = [2 * math.log(2), math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))]
    assert abs(patchguard_loss(logits, labels).item() - sum(per_image) / 2) < 1e-6


@pytest.mark.filterwarnings("ignore:reduction")
def test_kl_matches_torch_kl_div_mean():
    a = torch.rand(2, 3, 5, 5).softmax(-1)
    ref = F.kl_div(torch.log(a + 1e-8), torch.full_like(a, 0.2), reduction="mean")
    torch.testing.assert_close(attention_kl(a), ref)
    uniform = torch.full((1, 1, 4, 4), 0.25)
    assert abs(attention_kl(uniform).item()) < 1e-6


def test_regulariser_weights_apply_per_layer():
    logits, labels = torch.zeros(1, 4), torch.zeros(1, 4)
    maps = [torch.rand(1, 2, 4, 4).softmax(-1) for _ in range(3)]
    base = patchguard_loss(logits, labels)
    total = patchguard_loss(logits, labels, maps, (0.005, 0.01, 0.05))
    expected = base + sum(w * attention_kl(m) for w, m in zip((0.005, 0.01, 0.05), maps))
    torch.testing.assert_close(total, expected)
