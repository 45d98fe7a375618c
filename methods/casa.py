"""CaSA (BMVC 2022): attention-guided synthetic anomalies, a ViT with an image head and an attention map, the
training data's attention-entropy statistics, and test-time adaptation that matches them."""
import os
from dataclasses import dataclass, field
from typing import List, Tuple

import torch

from attacks import training_attack
from losses.casa_loss import ATTACK_OBJECTIVES, casa_attack_loss, casa_loss
from methods.base import Method, Outputs, ViTSaliency
from models.casa import CaSA, CaSAConfig
from models.tta import OPTIMIZERS, PARAM_SETS, EntropyMomentTTA
from models.backbone import backbone_for
from utils.errors import UserError
from utils.precision import autocast
from utils.readout import readout_given


@dataclass(frozen=True)
class CaSAOptions:
    model: CaSAConfig = field(default_factory=CaSAConfig)
    seg_loss: str = "focal_dice"      # focal_dice, bce_dice or bce
    seg_weight: float = 1.0
    tta: str = "both"                 # both: report without and with TTA; off
    tta_params: str = "layernorm"
    tta_optimizer: str = "adam"
    tta_lr: float = 1e-3
    tta_steps: int = 1
    tta_mode: str = "episodic"        # episodic (reset per batch) or online (per test setting)
    tta_attackers: Tuple[str, ...] = ("unaware", "adaptive")
    attack_objective: Tuple[str, ...] = ("joint",)  # joint, image, map: what test attacks ascend (several: rows)


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


class CaSAMethod(ViTSaliency, Method):
    name = "casa"
    options_class = CaSAOptions
    model_options_class = CaSAConfig
    adv_train_default = False            # the paper trains without attacks
    generator_default = "attention"
    compilable = False
    eager_reason = "CaSA's forward records attention through hooks, which torch.compile cannot trace"

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("CaSA (--method casa)")
        g.add_argument("--casa_map_layers", type=int, nargs="+", help="1-based blocks whose CLS-to-patch attention "
                                                                       "makes the map (default: the last three)")
        g.add_argument("--casa_head_hidden", type=int, default=512, help="hidden width of the image head")
        g.add_argument("--casa_score", choices=("head", "head+map"), default="head",
                       help="image score: the head's logit, or plus the mean of the top-k map logits")
        g.add_argument("--casa_seg_loss", choices=("focal_dice", "bce_dice", "bce"), default="focal_dice")
        g.add_argument("--casa_seg_weight", type=float, default=1.0)
        g.add_argument("--tta", choices=("both", "off"), default="both",
                       help="both: every test setting without and with test-time adaptation; off: without only")
        g.add_argument("--tta_params", choices=PARAM_SETS, default="layernorm")
        g.add_argument("--tta_optimizer", choices=OPTIMIZERS, default="adam",
                       help="adam (TENT); sgd passes the gradient on to an adaptive attacker (Adam's first step "
                            "is about lr x sign(g), nearly flat in the input)")
        g.add_argument("--tta_lr", type=float, default=1e-3)
        g.add_argument("--tta_steps", type=int, default=1)
        g.add_argument("--tta_mode", choices=("episodic", "online"), default="episodic",
                       help="episodic: every batch starts from the trained weights; online: adaptation carries "
                            "over the batches of one test setting")
        g.add_argument("--attack_objective", nargs="+", choices=tuple(ATTACK_OBJECTIVES), default=["joint"],
                       help="what test attacks ascend: joint (image logit + map margin), image or map; several: one "
                            "row each plus a row with each metric's minimum over them")
        g.add_argument("--tta_attackers", nargs="+", choices=("unaware", "adaptive"), default=["unaware", "adaptive"],
                       help="attacked rows with TTA: an attacker of the un-adapted model (unaware) and one that "
                            "differentiates through the adaptation (adaptive)")

    def options(self, a) -> CaSAOptions:
        if a.casa_head_hidden <= 0:
            raise UserError(f"--casa_head_hidden must be positive, got {a.casa_head_hidden}")
        if a.casa_seg_weight < 0:
            raise UserError(f"--casa_seg_weight must be >= 0, got {a.casa_seg_weight}")
        if not a.tta_lr > 0:
            raise UserError(f"--tta_lr must be positive, got {a.tta_lr}")
        if a.tta_steps < 1:
            raise UserError(f"--tta_steps must be >= 1, got {a.tta_steps}")
        model = CaSAConfig(backbone=backbone_for(a.backbone, a.backbone_weights), image_size=a.image_size,
                           patch_size=a.patch_size,
                           map_layers=tuple(a.casa_map_layers or ()), head_hidden=a.casa_head_hidden,
                           score=a.casa_score, **readout_given(a))
        return CaSAOptions(model=model, seg_loss=a.casa_seg_loss, seg_weight=a.casa_seg_weight, tta=a.tta,
                           tta_params=a.tta_params, tta_optimizer=a.tta_optimizer, tta_lr=a.tta_lr,
                           tta_steps=a.tta_steps, tta_mode=a.tta_mode,
                           tta_attackers=tuple(dict.fromkeys(a.tta_attackers)),
                           attack_objective=tuple(dict.fromkeys(a.attack_objective)))

    def build_model(self, model_options: CaSAConfig, backbone_weights=None) -> CaSA:
        return CaSA(model_options, backbone_weights)

    def train_step(self, model: CaSA, batch: dict, optimizer, cfg, device) -> float:
        """Image CE on (normal: 0, synthetic: 1) + segmentation of the synthetic patch by the attention map.
        With adversarial training on (not in the paper), PGD copies of both join the batch with the same labels."""
        t, o = cfg.train, cfg.method_options
        normal = batch["image"].to(device, non_blocking=True)
        pseudo = batch["pseudo"].to(device, non_blocking=True)
        pseudo_labels = batch["patch_labels"].to(device, non_blocking=True)
        images = torch.cat([normal, pseudo])
        patch_labels = torch.cat([torch.zeros_like(pseudo_labels), pseudo_labels])
        image_labels = torch.cat([torch.zeros(len(normal), device=device), torch.ones(len(pseudo), device=device)])
        if t.adv_train:
            attack = training_attack(model, t, self.attack_loss)
            with autocast(device, cfg.bf16):
                adv = attack(images, patch_labels)
            images, patch_labels, image_labels = (torch.cat([images, adv]), patch_labels.repeat(2, 1),
                                                  image_labels.repeat(2))
        model.train()
        with autocast(device, cfg.bf16):
            outputs = model(images)
        loss = casa_loss(outputs.float(), image_labels, patch_labels, o.seg_loss, o.seg_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    attack_loss = staticmethod(casa_attack_loss)

    def attack_objectives(self, cfg) -> dict:
        chosen = cfg.method_options.attack_objective
        if chosen == ("joint",):
            return {None: self.attack_loss}
        return {name: ATTACK_OBJECTIVES[name] for name in chosen}

    def after_training(self, model: CaSA, batches, cfg, device) -> None:
        fit_entropy_statistics(model, batches, device)

    def read_out(self, model: CaSA, outputs) -> Outputs:
        return Outputs(image_scores=model.image_scores(outputs), patch_map=model.patch_map(outputs))

    def score(self, model: CaSA, images, adapter=None) -> Outputs:
        """With the class-token features (for the t-SNE picture) when no adapter runs: the same forward."""
        if adapter is not None:
            return self.read_out(model, adapter(images).float())
        features, cls_maps, _ = model.features_and_attention(images)
        out = self.read_out(model, model.outputs(features, cls_maps).float())
        return Outputs(out.image_scores, out.patch_map, features)

    def adapter(self, model: CaSA, cfg):
        o = cfg.method_options
        if o.tta == "off":
            return None
        return EntropyMomentTTA(model, o.tta_params, o.tta_lr, o.tta_steps, episodic=o.tta_mode == "episodic",
                                optimizer=o.tta_optimizer, attackers=o.tta_attackers)

    def extra_pictures(self, predictions: dict, out_dir: str, seed: int) -> List[str]:
        """t-SNE of the class-token features before the head: where the head's inputs put normal and anomalous."""
        if predictions.get("features") is None or len(predictions["features"]) < 3:
            return []
        from utils.figures import save_tsne
        path = os.path.join(out_dir, "tsne.png")
        save_tsne(path, predictions["features"], predictions["labels"], seed)
        return [path]


CASA = CaSAMethod()
