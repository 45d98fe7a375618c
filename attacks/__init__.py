from attacks.losses import patch_margin_loss
from attacks.pgd import PGD, AttackReport

__all__ = ["PGD", "AttackReport", "patch_margin_loss"]
