"""CaSA (BMVC 2022): attention-guided synthetic anomalies, a ViT with an image head and an attention map, the
training data's attention-entropy statistics, and test-time adaptation that matches them."""
from dataclasses import dataclass

import torch

from attacks import training_attack
from losses.casa_loss import casa_attack_loss, casa_loss
from models.casa import CaSA, CaSAConfig
from models.patchguard import readout_given
from models.tta import EntropyMomentTTA
from utils.precision import autocast


def train_step(model: CaSA, batch: dict, optimizer, cfg, device) -> float:
    """Image CE on (normal: 0, synthetic: 1) + segmentation of the synthetic patch by the attention map.
    With adversarial training on (not in the paper), PGD copies of both join the batch with the same labels."""
    t, c = cfg.train, cfg.casa
    normal = batch["image"].to(device, non_blocking=True)
    pseudo = batch["pseudo"].to(device, non_blocking=True)
    pseudo_labels = batch["patch_labels"].to(device, non_blocking=True)
    images = torch.cat([normal, pseudo])
    patch_labels = torch.cat([torch.zeros_like(pseudo_labels), pseudo_labels])
    image_labels = torch.cat([torch.zeros(len(normal), device=device), torch.ones(len(pseudo), device=device)])
    if t.adv_train:
        attack = training_attack(model, t, casa_attack_loss, compile=cfg.compile)
        with autocast(device, cfg.bf16):
            adv = attack(images, patch_labels)
        images, patch_labels, image_labels = (torch.cat([images, adv]), patch_labels.repeat(2, 1),
                                              image_labels.repeat(2))
    model.train()
    with autocast(device, cfg.bf16):
        outputs = model(images)
    loss = casa_loss(outputs.float(), image_labels, patch_labels, c.seg_loss, c.seg_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def fit_entropy_statistics(model: CaSA, batches, device) -> None:
    """Stage II: per class (0 normal training images, 1 a fresh synthetic copy of each), the mean and second central
    moment of the attention entropy of every block and head, stored in the model's buffers."""
    model.eval()
    per_class = [[], []]
    for batch in batches:
        for c, key in enumerate(("image", "pseudo")):
            _, entropy = model.forward_with_entropy(batch[key].to(device))
            per_class[c].append(entropy.float())
    for c in (0, 1):
        e = torch.cat(per_class[c])
        model.entropy_mean[c] = e.mean(0)
        model.entropy_var[c] = e.var(0, unbiased=False)
    model.has_statistics.fill_(True)


def model_config(a) -> CaSAConfig:
    layers = tuple(a.casa_map_layers or ())
    return CaSAConfig(backbone=a.backbone, image_size=a.image_size, patch_size=a.patch_size, map_layers=layers,
                      head_hidden=a.casa_head_hidden, score=a.casa_score, **readout_given(a))


@dataclass(frozen=True)
class CaSAMethod:
    name: str = "casa"
    adv_train_default: bool = False      # the paper trains without attacks
    pseudo_anomaly_default: str = "attention"

    model_config = staticmethod(model_config)
    config_from_dict = staticmethod(CaSAConfig.from_dict)
    build = staticmethod(CaSA)
    train_step = staticmethod(train_step)
    attack_loss = staticmethod(casa_attack_loss)

    @staticmethod
    def after_training(model, batches, cfg, device) -> None:
        fit_entropy_statistics(model, batches, device)

    @staticmethod
    def adapter(model, cfg):
        c = cfg.casa
        if c.tta == "off":
            return None
        return EntropyMomentTTA(model, c.tta_params, c.tta_lr, c.tta_steps, episodic=c.tta_mode == "episodic")


CASA = CaSAMethod()
