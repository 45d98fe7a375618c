"""Single-step attacks for cheap adversarial training: FGSM with random start and N-FGSM."""
from typing import Optional

import torch
import torch.nn as nn

from attacks.base import Attack, LossFn
from attacks.losses import patch_margin_loss


class FGSMRS(Attack):
    """FGSM with random start (Wong et al., 2020): a uniform start in the eps-ball, one signed-gradient step of
    1.25 eps, projected back into the eps-ball and [0, 1]."""

    def __init__(self, model: nn.Module, eps: float, alpha: Optional[float] = None, model_mode: Optional[str] = "eval",
                 loss_fn: LossFn = patch_margin_loss, seed: Optional[int] = None, compile: bool = False):
        super().__init__(model, eps, 1, True, 1, model_mode, loss_fn, seed, compile)
        self.alpha = 1.25 * eps if alpha is None else float(alpha)

    def __repr__(self) -> str:
        return (f"FGSM_RS(eps={self.eps * 255:.4g}/255, alpha={self.alpha * 255:.4g}/255, mode={self.model_mode}, "
                f"{self._describe()})")

    def _run(self, x0: torch.Tensor, start: torch.Tensor, labels: torch.Tensor):
        _, grad = self._gradient(start, labels)
        return self._project(start + self.alpha * grad.sign(), x0), grad.flatten(1).abs().amax(1) == 0


class NFGSM(Attack):
    """N-FGSM (de Jorge et al., 2022): noise U(-2 eps, 2 eps), one signed-gradient step of eps, no projection
    back to the eps-ball: the perturbation stays within its own bound, 3 eps, and the images in [0, 1]."""

    def __init__(self, model: nn.Module, eps: float, noise: float = 2.0, step: float = 1.0,
                 model_mode: Optional[str] = "eval", loss_fn: LossFn = patch_margin_loss, seed: Optional[int] = None,
                 compile: bool = False):
        super().__init__(model, eps, 1, False, 1, model_mode, loss_fn, seed, compile)
        self.noise, self.alpha = noise * eps, step * eps

    @property
    def bound(self) -> float:
        return self.noise + self.alpha

    def __repr__(self) -> str:
        return (f"N-FGSM(eps={self.eps * 255:.4g}/255, noise={self.noise * 255:.4g}/255, "
                f"step={self.alpha * 255:.4g}/255, mode={self.model_mode}, "
                f"{self._describe()})")

    def _run(self, x0: torch.Tensor, start: torch.Tensor, labels: torch.Tensor):
        gen = self._generator(x0.device)
        noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x = (x0 + (2 * noise - 1) * self.noise).clamp(0, 1)
        _, grad = self._gradient(x, labels)
        return (x + self.alpha * grad.sign()).clamp(0, 1), grad.flatten(1).abs().amax(1) == 0


TRAIN_ATTACKS = ("pgd", "fgsm_rs", "nfgsm")


def training_attack(model: nn.Module, train, loss_fn: LossFn = patch_margin_loss, compile: bool = False) -> Attack:
    """The attack adversarial training uses (`train`: the run's training options)."""
    from attacks.pgd import PGD
    common = dict(model_mode=train.attack_mode, loss_fn=loss_fn, compile=compile)
    if train.train_attack == "fgsm_rs":
        return FGSMRS(model, train.epsilon_train, **common)
    if train.train_attack == "nfgsm":
        return NFGSM(model, train.epsilon_train, **common)
    return PGD(model, train.epsilon_train, train.step_train, **common)
