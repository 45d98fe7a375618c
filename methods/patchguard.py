"""PatchGuard (CVPR 2025): transformer discriminator on ViT patch features, adversarial training on normal
images and foreground-aware pseudo-anomalies, attention-spreading KL term."""
from dataclasses import dataclass, field
from typing import Tuple

import torch

from attacks import patch_margin_loss, training_attack
from losses.patchguard_loss import patchguard_loss
from methods.base import Method, Outputs, ViTSaliency
from models.patchguard import PatchGuard, PatchGuardConfig
from models.backbone import backbone_for
from utils.errors import UserError
from utils.precision import autocast
from utils.readout import readout_given


@dataclass(frozen=True)
class PatchGuardOptions:
    model: PatchGuardConfig = field(default_factory=PatchGuardConfig)
    use_reg: bool = True                                   # the KL term on the attention of --reg_layers
    reg_weights: Tuple[float, ...] = (0.005, 0.01, 0.05)


class PatchGuardMethod(ViTSaliency, Method):
    name = "patchguard"
    options_class = PatchGuardOptions
    model_options_class = PatchGuardConfig
    adv_train_default = True
    generator_default = "foreground"

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("PatchGuard (--method patchguard)")
        g.add_argument("--feature_layers", type=int, nargs="+", default=[12], help="1-based block ids for features")
        g.add_argument("--reg_layers", type=int, nargs="+", default=[6, 9, 12],
                       help="1-based block ids for the KL term")
        g.add_argument("--hidden_dim", type=int, default=2048)
        g.add_argument("--dsc_layers", type=int, default=1)
        g.add_argument("--dsc_heads", type=int, default=4)
        g.add_argument("--no_reg", action="store_false", dest="use_reg")
        g.add_argument("--reg_weights", type=float, nargs="+", default=[0.005, 0.01, 0.05],
                       help="one per --reg_layers")

    def options(self, a) -> PatchGuardOptions:
        for name in ("hidden_dim", "dsc_layers", "dsc_heads"):
            if getattr(a, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(a, name)}")
        if a.use_reg and len(a.reg_weights) != len(a.reg_layers):
            raise UserError(f"--reg_weights has {len(a.reg_weights)} values but --reg_layers has {len(a.reg_layers)}")
        model = PatchGuardConfig(backbone=backbone_for(a.backbone, a.backbone_weights), image_size=a.image_size,
                                 patch_size=a.patch_size,
                                 feature_layers=tuple(a.feature_layers), reg_layers=tuple(a.reg_layers),
                                 hidden_dim=a.hidden_dim, dsc_layers=a.dsc_layers, dsc_heads=a.dsc_heads,
                                 **readout_given(a))
        return PatchGuardOptions(model=model, use_reg=a.use_reg, reg_weights=tuple(a.reg_weights))

    def build_model(self, model_options: PatchGuardConfig, backbone_weights=None) -> PatchGuard:
        return PatchGuard(model_options, backbone_weights)

    def recognises(self, state_dict: dict) -> bool:
        """The official code's released state dicts."""
        return any(k.startswith("feature_extractor.pretrained_model.") for k in state_dict) and \
            any(k.startswith("discriminator.") for k in state_dict)

    def train_step(self, model: PatchGuard, batch: dict, optimizer, cfg, device) -> float:
        """One optimiser step on the sum of four official loss terms: clean/adversarial x normal/pseudo-anomaly.

        The two attacks run as one batched PGD, and the four terms as one forward: per-image results are the same
        as four separate calls, with fewer, larger kernels.
        """
        t, o = cfg.train, cfg.method_options
        normal = batch["image"].to(device, non_blocking=True)
        pseudo = batch["pseudo"].to(device, non_blocking=True)
        pseudo_labels = batch["patch_labels"].to(device, non_blocking=True)
        normal_labels = torch.zeros_like(pseudo_labels)
        b = len(normal)
        groups = [(normal, normal_labels), (pseudo, pseudo_labels)]
        if t.adv_train:
            attack = training_attack(model, t, self.attack_loss, compile=cfg.compile and self.compilable)
            with autocast(device, cfg.bf16):
                adv = attack(torch.cat([normal, pseudo]), torch.cat([normal_labels, pseudo_labels]))
            groups = [groups[0], (adv[:b], normal_labels), groups[1], (adv[b:], pseudo_labels)]
        images = torch.cat([g[0] for g in groups])
        labels = torch.cat([g[1] for g in groups])
        model.train()
        with autocast(device, cfg.bf16):
            if o.use_reg:
                logits, maps = model.forward_with_attention(images)
            else:
                logits, maps = model(images), []
        loss = sum(patchguard_loss(logits[i:i + b].float(), labels[i:i + b], [m[i:i + b] for m in maps],
                                   o.reg_weights) for i in range(0, len(images), b))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    attack_loss = staticmethod(patch_margin_loss)

    def read_out(self, model: PatchGuard, outputs) -> Outputs:
        return Outputs(image_scores=model.image_scores(outputs), patch_map=outputs)


PATCHGUARD = PatchGuardMethod()
