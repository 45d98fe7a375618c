"""PatchGuard (CVPR 2025): transformer discriminator on ViT patch features, adversarial training on normal
images and foreground-aware pseudo-anomalies, attention-spreading KL term."""
from dataclasses import dataclass

import torch

from attacks import patch_margin_loss, training_attack
from losses.patchguard_loss import patchguard_loss
from models.patchguard import ModelConfig, PatchGuard, readout_given
from utils.precision import autocast


def train_step(model: PatchGuard, batch: dict, optimizer, cfg, device) -> float:
    """One optimiser step on the sum of four official loss terms: clean/adversarial x normal/pseudo-anomaly.

    The two attacks run as one batched PGD, and the four terms as one forward: per-image results are the same
    as four separate calls, with fewer, larger kernels.
    """
    t = cfg.train
    normal = batch["image"].to(device, non_blocking=True)
    pseudo = batch["pseudo"].to(device, non_blocking=True)
    pseudo_labels = batch["patch_labels"].to(device, non_blocking=True)
    normal_labels = torch.zeros_like(pseudo_labels)
    b = len(normal)
    groups = [(normal, normal_labels), (pseudo, pseudo_labels)]
    if t.adv_train:
        attack = training_attack(model, t, compile=cfg.compile)
        with autocast(device, cfg.bf16):
            adv = attack(torch.cat([normal, pseudo]), torch.cat([normal_labels, pseudo_labels]))
        groups = [groups[0], (adv[:b], normal_labels), groups[1], (adv[b:], pseudo_labels)]
    images = torch.cat([g[0] for g in groups])
    labels = torch.cat([g[1] for g in groups])
    model.train()
    with autocast(device, cfg.bf16):
        if t.use_reg:
            logits, maps = model.forward_with_attention(images)
        else:
            logits, maps = model(images), []
    loss = sum(patchguard_loss(logits[i:i + b].float(), labels[i:i + b], [m[i:i + b] for m in maps], t.reg_weights)
               for i in range(0, len(images), b))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def model_config(a) -> ModelConfig:
    return ModelConfig(backbone=a.backbone, image_size=a.image_size, patch_size=a.patch_size,
                       feature_layers=tuple(a.feature_layers), reg_layers=tuple(a.reg_layers),
                       hidden_dim=a.hidden_dim, dsc_layers=a.dsc_layers, dsc_heads=a.dsc_heads, **readout_given(a))


@dataclass(frozen=True)
class PatchGuardMethod:
    name: str = "patchguard"
    adv_train_default: bool = True
    pseudo_anomaly_default: str = "foreground"

    model_config = staticmethod(model_config)
    config_from_dict = staticmethod(ModelConfig.from_dict)
    build = staticmethod(PatchGuard)
    train_step = staticmethod(train_step)
    attack_loss = staticmethod(patch_margin_loss)

    @staticmethod
    def after_training(model, dataset, cfg, device) -> None:
        return None

    @staticmethod
    def adapter(model, cfg):
        return None


PATCHGUARD = PatchGuardMethod()
