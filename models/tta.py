"""CaSA stage III: test-time adaptation that matches attention-entropy statistics.

For a test batch, the model's own prediction assigns each image to a class (normal / anomalous; labels are never
read); per class, the batch's mean and second central moment of the attention entropy (every block and head) are
pulled towards the stored training statistics, each difference scaled by the stored spread (moment matching as in
ActMAD/TTAC). A few parameters are adapted (LayerNorm affine by default), with Adam (TENT's lr 1e-3, one step);
episodic by default: the parameters go back to their trained values before every batch.
"""
import copy
from typing import List

import torch
import torch.nn as nn

from utils.errors import UserError

PARAM_SETS = ("layernorm", "attention", "all")


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


class EntropyMomentTTA:
    def __init__(self, model: nn.Module, params: str = "layernorm", lr: float = 1e-3, steps: int = 1,
                 episodic: bool = True):
        if not bool(model.has_statistics):
            raise UserError("this CaSA checkpoint has no attention-entropy statistics (stage II); train it with "
                            "this version, or test with --tta off")
        self.model, self.steps, self.episodic = model, steps, episodic
        self.params = adapted_parameters(model, params)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.initial = [p.detach().clone() for p in self.params]
        self.initial_optimizer = copy.deepcopy(self.optimizer.state_dict())

    def __repr__(self) -> str:
        return (f"EntropyMomentTTA(params={len(self.params)} tensors, lr={self.optimizer.defaults['lr']}, "
                f"steps={self.steps}, {'episodic' if self.episodic else 'online'})")

    def reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.params, self.initial):
                p.copy_(p0)
        self.optimizer.load_state_dict(copy.deepcopy(self.initial_optimizer))

    def objective(self, images: torch.Tensor) -> torch.Tensor:
        outputs, entropy = self.model.forward_with_entropy(images)
        return moment_objective(self.model, outputs.float(), entropy.float())

    def adapt(self, images: torch.Tensor) -> None:
        """Adapt the chosen parameters on this batch (images only)."""
        if self.episodic:
            self.reset()
        chosen = {id(p) for p in self.params}
        frozen = [p for p in self.model.parameters() if id(p) not in chosen and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                for _ in range(self.steps):
                    loss = self.objective(images.detach())
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
