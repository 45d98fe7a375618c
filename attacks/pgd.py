"""L-inf PGD on patch logits, torchattacks style: hyper-parameters in __init__, the attack in __call__."""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from attacks.losses import patch_margin_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, patch_labels) -> per-image loss (B,)


@dataclass
class AttackReport:
    """Post-attack checks (AutoAttack style) for one batch or, merged, a whole test set."""
    eps: float
    max_delta: float = 0.0
    min_value: float = 1.0
    max_value: float = 0.0
    nan_count: int = 0
    zero_grad_images: int = 0
    images: int = 0

    def merge(self, other: "AttackReport") -> "AttackReport":
        return AttackReport(self.eps, max(self.max_delta, other.max_delta), min(self.min_value, other.min_value),
                            max(self.max_value, other.max_value), self.nan_count + other.nan_count,
                            self.zero_grad_images + other.zero_grad_images, self.images + other.images)

    @property
    def ok(self) -> bool:
        return (self.max_delta <= self.eps + 1e-6 and self.min_value >= 0.0 and self.max_value <= 1.0
                and self.nan_count == 0)

    def as_dict(self) -> dict:
        return {"eps": self.eps, "max_abs_delta": self.max_delta, "min_pixel": self.min_value,
                "max_pixel": self.max_value, "nan_count": self.nan_count,
                "zero_gradient_share": self.zero_grad_images / max(self.images, 1), "ok": self.ok}


class PGD:
    """Projected gradient ascent of a per-image loss inside the L-inf eps-ball, clipped to [0, 1].

    Official defaults: alpha = 2.5 * eps / steps, no random start, one restart. Gradients are taken with
    torch.autograd.grad w.r.t. the input only, so parameter .grad is never touched.

    Args:
        model: maps images in [0, 1] to patch logits (B, N).
        eps, steps, alpha: budget, iterations, step size (None: 2.5 * eps / steps).
        random_start: start from a uniform point in the eps-ball.
        restarts: runs per image; restarts after the first start at random points; the best final loss wins.
        model_mode: "eval", "train" (official training attacks keep dropout on) or None (leave as is).
        loss_fn: per-image objective to ascend; default is the official label-aware patch loss.
    """

    def __init__(self, model: nn.Module, eps: float, steps: int, alpha: Optional[float] = None,
                 random_start: bool = False, restarts: int = 1, model_mode: Optional[str] = "eval",
                 loss_fn: LossFn = patch_margin_loss, seed: Optional[int] = None):
        if eps < 0 or steps < 0 or restarts < 1:
            raise ValueError(f"invalid PGD settings: eps={eps}, steps={steps}, restarts={restarts}")
        self.model, self.eps, self.steps = model, float(eps), int(steps)
        self.alpha = float(alpha) if alpha is not None else (2.5 * eps / steps if steps else 0.0)
        self.random_start, self.restarts, self.model_mode = random_start, restarts, model_mode
        self.loss_fn, self.seed = loss_fn, seed
        self.last_report: Optional[AttackReport] = None

    def __repr__(self) -> str:
        return (f"PGD(eps={self.eps * 255:.4g}/255, steps={self.steps}, alpha={self.alpha * 255:.4g}/255, "
                f"random_start={self.random_start}, restarts={self.restarts}, mode={self.model_mode}, "
                f"loss={getattr(self.loss_fn, '__name__', self.loss_fn)})")

    def __call__(self, images: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        # frozen parameters: autograd then keeps no tensors for weight gradients it would never compute
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.model_mode is not None:
            self.model.train(self.model_mode == "train")
        try:
            for p in trainable:
                p.requires_grad_(False)
            return self._attack(images.detach(), patch_labels.detach())
        finally:
            for p in trainable:
                p.requires_grad_(True)
            self.model.train(was_training)

    def _attack(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=x0.device).manual_seed(self.seed)
        best, best_loss, zero_grad = x0.clone(), None, torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        for r in range(self.restarts):
            x = x0.clone()
            if self.random_start or r > 0:
                noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
                x = (x0 + (2 * noise - 1) * self.eps).clamp(0, 1)
            for step in range(self.steps):
                x.requires_grad_(True)
                loss = self.loss_fn(self.model(x), labels)
                (grad,) = torch.autograd.grad(loss.sum(), x)
                if step == 0 and r == 0:
                    zero_grad = grad.flatten(1).abs().amax(1) == 0
                x = x.detach() + self.alpha * grad.sign()
                x = torch.min(torch.max(x, x0 - self.eps), x0 + self.eps).clamp(0, 1)
            if self.restarts == 1:
                best = x.detach()
                break
            with torch.no_grad():
                loss = self.loss_fn(self.model(x), labels)
            better = loss > best_loss if best_loss is not None else torch.ones_like(loss, dtype=torch.bool)
            best[better] = x[better].detach()
            best_loss = loss if best_loss is None else torch.where(better, loss, best_loss)
        self.last_report = self._report(x0, best, zero_grad)
        return best

    def _report(self, x0: torch.Tensor, x: torch.Tensor, zero_grad: torch.Tensor) -> AttackReport:
        return AttackReport(
            eps=self.eps, max_delta=float((x - x0).abs().max()) if x.numel() else 0.0,
            min_value=float(x.min()), max_value=float(x.max()), nan_count=int(torch.isnan(x).sum()),
            zero_grad_images=int(zero_grad.sum()), images=len(x))
