"""What every attack shares: model mode handling, frozen parameters, and the post-attack checks."""
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


def compiled(model: nn.Module):
    """`model` under torch.compile, made once per model and kept in its __dict__ (not a submodule: state dicts
    are unchanged). Compiles on the first call, again when the batch shape, train/eval mode or autocast changes
    (a second batch size makes the batch dimension dynamic). Whether a model can be compiled is its method's
    call (`Method.compilable`)."""
    fn = model.__dict__.get("_compiled")
    if fn is None:
        fn = model.__dict__["_compiled"] = torch.compile(model)
    return fn


class Attack:
    """L-inf attack on patch logits, torchattacks style: hyper-parameters in __init__, the attack in __call__.

    __call__ sets the model mode (eval, or train as the official training attacks), freezes the parameters
    (autograd then keeps nothing for weight gradients), restores both, and stores the post-attack checks in
    `last_report`. Restarts after the first start at uniform random points in the eps-ball and each image keeps
    its best final point. Subclasses implement one run: `_run(x0, start, labels) -> (x_adv, zero_grad mask)`.

    `forward` (default: the model) is what the attack differentiates, e.g. the model after test-time adaptation
    on the attacked images (an adaptive attacker); the mode and frozen parameters are still set on `model`.
    """

    def __init__(self, model: nn.Module, eps: float, steps: int, random_start: bool = False, restarts: int = 1,
                 model_mode: Optional[str] = "eval", loss_fn: LossFn = patch_margin_loss, seed: Optional[int] = None,
                 compile: bool = False, forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if eps < 0 or steps < 0 or restarts < 1:
            raise ValueError(f"invalid attack settings: eps={eps}, steps={steps}, restarts={restarts}")
        self.model, self.eps, self.steps = model, float(eps), int(steps)
        self.forward = forward or (compiled(model) if compile else model)  # what the attack evaluates
        self.random_start, self.restarts = random_start, int(restarts)
        self.model_mode, self.loss_fn, self.seed = model_mode, loss_fn, seed
        self.last_report: Optional[AttackReport] = None

    def _attack(self, x0: torch.Tensor, labels: torch.Tensor):
        gen = self._generator(x0.device)
        best, best_loss, zero_grad = x0.clone(), None, None
        for r in range(self.restarts):
            start = self._uniform_start(x0, gen) if (self.random_start or r > 0) else x0.clone()
            x, zg = self._run(x0, start, labels)
            zero_grad = zg if zero_grad is None else zero_grad
            if self.restarts == 1:
                return x, zero_grad
            with torch.no_grad():
                loss = self.loss_fn(self.forward(x), labels)
            better = torch.ones_like(loss, dtype=torch.bool) if best_loss is None else loss > best_loss
            best = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), x, best)
            best_loss = loss if best_loss is None else torch.where(better, loss, best_loss)
        return best, zero_grad

    def __call__(self, images: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.model_mode is not None:
            self.model.train(self.model_mode == "train")
        try:
            for p in trainable:
                p.requires_grad_(False)
            x0 = images.detach()
            x, zero_grad = self._attack(x0, patch_labels.detach())
            if x.numel():  # one transfer to the host for all five checks
                checks = torch.stack([(x - x0).abs().max(), x.min(), x.max(), torch.isnan(x).sum().to(x.dtype),
                                      zero_grad.sum().to(x.dtype)]).tolist()
            else:
                checks = [0.0, 1.0, 0.0, 0, 0]
            max_delta, lo, hi, nans, zero = checks
            self.last_report = AttackReport(eps=self.bound, max_delta=max_delta, min_value=lo, max_value=hi,
                                            nan_count=int(nans), zero_grad_images=int(zero), images=len(x))
            return x
        finally:
            for p in trainable:
                p.requires_grad_(True)
            self.model.train(was_training)

    def _describe(self) -> str:
        """The objective and, for an adaptive attacker, what it attacks through (for __repr__)."""
        through = "" if self.forward is self.model or self.forward is self.model.__dict__.get("_compiled") \
            else ", through test-time adaptation"
        return f"loss={getattr(self.loss_fn, '__name__', self.loss_fn)}{through}"

    @property
    def bound(self) -> float:
        """The largest |perturbation| this attack may make (the eps-ball, unless an attack says otherwise)."""
        return self.eps

    def _generator(self, device) -> Optional[torch.Generator]:
        return torch.Generator(device=device).manual_seed(self.seed) if self.seed is not None else None

    def _gradient(self, x: torch.Tensor, labels: torch.Tensor):
        """Per-image loss and its gradient w.r.t. the input only."""
        x = x.detach().requires_grad_(True)
        loss = self.loss_fn(self.forward(x), labels)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad

    def _project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(x, x0 - self.eps), x0 + self.eps).clamp(0, 1)

    def _uniform_start(self, x0: torch.Tensor, gen) -> torch.Tensor:
        noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        return (x0 + (2 * noise - 1) * self.eps).clamp(0, 1)
