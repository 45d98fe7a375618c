from attacks.apgd import APGD
from attacks.base import Attack, AttackReport
from attacks.fgsm import FGSMRS, NFGSM, TRAIN_ATTACKS, training_attack
from attacks.losses import patch_margin_loss
from attacks.pgd import PGD

__all__ = ["APGD", "PGD", "FGSMRS", "NFGSM", "TRAIN_ATTACKS", "Attack", "AttackReport", "patch_margin_loss",
           "training_attack"]
