"""APGD (Croce & Hein, 2020) on the patch loss: step-size schedule with checkpoints, momentum, best point kept.

Follows AutoAttack's APGDAttack.attack_single_run (L-inf): step 2 eps, momentum 0.75, checkpoints
p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); at a checkpoint the step halves for images
whose loss rose in fewer than rho = 75% of the steps since the last one, or whose step and best loss did not
change, and those images restart from their best point. The returned image is each image's best point.
"""
from typing import Optional

import torch
import torch.nn as nn

from attacks.base import Attack, LossFn
from attacks.losses import patch_margin_loss


def checkpoints(steps: int):
    """Iterations after which the step size may halve; AutoAttack's integer form of the p_j schedule."""
    first, decrease, minimum = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, k, at = [], first, first
    while at <= steps:
        marks.append(at)
        k = max(k - decrease, minimum)
        at += k
    return marks


class APGD(Attack):
    def __init__(self, model: nn.Module, eps: float, steps: int, restarts: int = 1, rho: float = 0.75,
                 random_start: bool = False, model_mode: Optional[str] = "eval",
                 loss_fn: LossFn = patch_margin_loss, seed: Optional[int] = None, compile: bool = False,
                 forward=None):
        super().__init__(model, eps, steps, random_start, restarts, model_mode, loss_fn, seed, compile, forward)
        self.rho = rho

    def __repr__(self) -> str:
        return (f"APGD(eps={self.eps * 255:.4g}/255, steps={self.steps}, restarts={self.restarts}, rho={self.rho}, "
                f"random_start={self.random_start}, mode={self.model_mode}, "
                f"{self._describe()})")

    def _run(self, x0: torch.Tensor, start: torch.Tensor, labels: torch.Tensor):
        b = len(x0)
        view = (b,) + (1,) * (x0.dim() - 1)
        marks = set(checkpoints(self.steps))
        step = torch.full(view, 2.0 * self.eps, device=x0.device, dtype=x0.dtype)
        x = start
        loss, grad = self._gradient(x, labels)
        zero_grad = grad.flatten(1).abs().amax(1) == 0
        x_best, loss_best, grad_best = x.clone(), loss.clone(), grad.clone()
        if self.steps == 0:
            return x_best, zero_grad
        x_prev = x.clone()
        rises = torch.zeros(b, device=x0.device)
        step_at_mark, best_at_mark, last_mark = step.clone(), loss_best.clone(), 0
        loss_prev = loss
        for k in range(self.steps):
            with torch.no_grad():
                z = self._project(x + step * grad.sign(), x0)
                momentum = 0.75 if k > 0 else 1.0
                x_new = self._project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev), x0)
            x_prev = x
            x = x_new
            loss, grad_new = self._gradient(x, labels)
            rises += (loss > loss_prev).float()
            loss_prev = loss
            improved = loss > loss_best
            pick = improved.view(view)  # torch.where, not boolean indexing: no host sync on a GPU
            x_best, grad_best = torch.where(pick, x, x_best), torch.where(pick, grad_new, grad_best)
            loss_best = torch.where(improved, loss, loss_best)
            grad = grad_new
            if k + 1 in marks:
                since = k + 1 - last_mark
                too_few_rises = rises < self.rho * since
                stalled = (step.flatten() == step_at_mark.flatten()) & (loss_best == best_at_mark)
                halve = too_few_rises | stalled
                step_at_mark, best_at_mark = step.clone(), loss_best.clone()
                halve = halve.view(view)
                step = torch.where(halve, step / 2.0, step)
                # those images go on from their best point (AutoAttack keeps its gradient too)
                x, grad = torch.where(halve, x_best, x), torch.where(halve, grad_best, grad)
                rises.zero_()
                last_mark = k + 1
        return x_best, zero_grad
