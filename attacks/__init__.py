from attacks.apgd import APGD
from attacks.base import Attack, AttackReport
from attacks.losses import patch_margin_loss
from attacks.pgd import PGD

__all__ = ["APGD", "PGD", "Attack", "AttackReport", "patch_margin_loss"]
