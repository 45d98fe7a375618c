"""L-inf PGD (Madry et al.), the attack of the official code."""
from typing import Optional

import torch
import torch.nn as nn

from attacks.base import Attack, LossFn
from attacks.losses import patch_margin_loss


class PGD(Attack):
    """Projected gradient ascent of a per-image loss inside the L-inf eps-ball, clipped to [0, 1].

    Official defaults: alpha = 2.5 * eps / steps, no random start, one restart.

    Args:
        model: maps images in [0, 1] to patch logits (B, N).
        eps, steps, alpha: budget, iterations, step size (None: 2.5 * eps / steps).
        random_start: start from a uniform point in the eps-ball.
        restarts: runs per image; restarts after the first start at random points; the best final loss wins.
        model_mode: "eval", "train" (official training attacks keep dropout on) or None (leave as is).
        loss_fn: per-image objective to ascend; default is the official label-aware patch loss.
        compile: evaluate the model through torch.compile (`attacks.base.compiled`).
        forward: what to differentiate instead of the model (e.g. the model adapted at test time).
    """

    def __init__(self, model: nn.Module, eps: float, steps: int, alpha: Optional[float] = None,
                 random_start: bool = False, restarts: int = 1, model_mode: Optional[str] = "eval",
                 loss_fn: LossFn = patch_margin_loss, seed: Optional[int] = None, compile: bool = False,
                 forward=None):
        super().__init__(model, eps, steps, random_start, restarts, model_mode, loss_fn, seed, compile, forward)
        self.alpha = float(alpha) if alpha is not None else (2.5 * eps / steps if steps else 0.0)

    def __repr__(self) -> str:
        return (f"PGD(eps={self.eps * 255:.4g}/255, steps={self.steps}, alpha={self.alpha * 255:.4g}/255, "
                f"random_start={self.random_start}, restarts={self.restarts}, mode={self.model_mode}, "
                f"{self._describe()})")

    def _run(self, x0: torch.Tensor, start: torch.Tensor, labels: torch.Tensor):
        x, zero_grad = start, torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        for step in range(self.steps):
            _, grad = self._gradient(x, labels)
            if step == 0:
                zero_grad = grad.flatten(1).abs().amax(1) == 0
            x = self._project(x + self.alpha * grad.sign(), x0)
        return x, zero_grad
