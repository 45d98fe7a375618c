"""CaSA stage III: test-time adaptation that matches attention-entropy statistics.

For a test batch, the model's own prediction assigns each image to a class (normal / anomalous; labels are never
read); per class, the batch's mean and second central moment of the attention entropy (every block and head) are
pulled towards the stored training statistics, each difference scaled by the stored spread (moment matching as in
ActMAD/TTAC). A few parameters are adapted (LayerNorm affine by default) with Adam (TENT's lr 1e-3, one step) or SGD.

The model is never changed in place: adapted parameters are held apart and applied with
`torch.func.functional_call`, so nothing outlives its batch (episodic) or its test setting (online, until
`reset`), and an attacker can differentiate through the adaptation (`differentiable=True`). Adam's first step is
lr * g / (|g| + 1e-8), about lr * sign(g): its derivative with respect to the input is nearly zero, so an adaptive
attacker sees almost nothing through it; SGD's step lr * g passes the gradient on.
"""
import math
from typing import Dict, List

import torch
import torch.nn as nn
from torch.func import functional_call

from utils.errors import UserError

PARAM_SETS = ("layernorm", "attention", "all")
OPTIMIZERS = ("adam", "sgd")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


def adapted_parameters(model: nn.Module, which: str) -> List[nn.Parameter]:
    backbone = model.feature_extractor.pretrained_model
    if which == "layernorm":
        return [p for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    if which == "attention":
        return [p for blk in backbone.blocks for p in blk.attn.parameters()]
    if which == "all":
        return list(model.parameters())
    raise UserError(f"--tta_params must be one of {', '.join(PARAM_SETS)}, got {which}")


def moment_objective(model: nn.Module, outputs: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """Discrepancy between the batch's per-class entropy moments and the stored ones (0 for an empty class)."""
    mean, var = model.entropy_mean, model.entropy_var
    predicted = (outputs[:, 0] > 0).long()          # the model's own decision, never a label
    total = outputs.new_zeros(())
    for c in (0, 1):
        e = entropy[predicted == c]
        if len(e) == 0:
            continue
        term = ((e.mean(0) - mean[c]).abs() / var[c].sqrt().clamp_min(1e-6)).mean()
        if len(e) > 1:
            term = term + ((e.var(0, unbiased=False) - var[c]).abs() / var[c].clamp_min(1e-12)).mean()
        total = total + term * len(e) / len(entropy)
    return total


class _WithEntropy(nn.Module):
    """forward = the model's forward_with_entropy, so functional_call can swap the adapted parameters in."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.forward_with_entropy(images)


class EntropyMomentTTA:
    """`adapter(images)` -> raw outputs of the model adapted on `images` (see the module docstring)."""

    def __init__(self, model: nn.Module, params: str = "layernorm", lr: float = 1e-3, steps: int = 1,
                 episodic: bool = True, optimizer: str = "adam", attackers=("unaware", "adaptive")):
        if not bool(model.has_statistics):
            raise UserError("this CaSA checkpoint has no attention-entropy statistics (stage II); train it with "
                            "this version, or test with --tta off")
        if optimizer not in OPTIMIZERS:
            raise UserError(f"--tta_optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer}")
        chosen = {id(p) for p in adapted_parameters(model, params)}
        self.model, self.lr, self.steps, self.episodic, self.optimizer = model, lr, steps, episodic, optimizer
        self.names = [n for n, p in model.named_parameters() if id(p) in chosen]
        self.attackers = tuple(attackers)
        self._with_entropy = _WithEntropy(model)
        self._state = None

    def __repr__(self) -> str:
        return (f"EntropyMomentTTA(params={len(self.names)} tensors, {self.optimizer}, lr={self.lr}, "
                f"steps={self.steps}, {'episodic' if self.episodic else 'online'})")

    def reset(self) -> None:
        """Back to the trained weights (an online adapter's state starts again)."""
        self._state = None

    def _initial_state(self) -> dict:
        named = dict(self.model.named_parameters())
        params = {n: named[n].detach() for n in self.names}
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        return {"params": params, "m": zeros, "v": dict(zeros), "t": 0}

    def objective(self, images: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        outputs, entropy = functional_call(self._with_entropy, {"model." + n: p for n, p in params.items()},
                                           (images,))
        wide = torch.promote_types(outputs.dtype, torch.float32)  # bf16 autocast -> fp32; float64 stays
        return moment_objective(self.model, outputs.to(wide), entropy.to(wide))

    def __call__(self, images: torch.Tensor, differentiable: bool = False, update: bool = True) -> torch.Tensor:
        state = self._initial_state() if self.episodic or self._state is None else self._state
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for p in trainable:  # gradients go to the adapted copies only
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                x = images if differentiable else images.detach()
                for _ in range(self.steps):
                    state = self._step(x, state, differentiable)
            params = state["params"]
            outputs = functional_call(self.model, params, (images,))
        finally:
            for p in trainable:
                p.requires_grad_(True)
        if update and not self.episodic:
            self._state = {k: ({n: t.detach() for n, t in v.items()} if isinstance(v, dict) else v)
                           for k, v in state.items()}
        return outputs

    def _step(self, images: torch.Tensor, state: dict, differentiable: bool) -> dict:
        params = {n: (p if differentiable and p.requires_grad else p.detach().requires_grad_(True))
                  for n, p in state["params"].items()}
        loss = self.objective(images, params)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=differentiable, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]
        t = state["t"] + 1
        new, m, v = {}, {}, {}
        for (n, p), g in zip(params.items(), grads):
            if self.optimizer == "sgd":
                new[n], m[n], v[n] = p - self.lr * g, state["m"][n], state["v"][n]
                continue
            b1, b2 = ADAM_BETAS
            m[n] = b1 * state["m"][n] + (1 - b1) * g
            v[n] = b2 * state["v"][n] + (1 - b2) * g * g
            # as torch.optim.Adam; + 1e-30 keeps sqrt's derivative finite where a gradient is exactly 0
            denom = (v[n] + 1e-30).sqrt() / math.sqrt(1 - b2 ** t) + ADAM_EPS
            new[n] = p - (self.lr / (1 - b1 ** t)) * m[n] / denom
        if not differentiable:
            new = {n: p.detach() for n, p in new.items()}
        return {"params": new, "m": m, "v": v, "t": t}
