from models.patchguard import ModelConfig, PatchGuard

__all__ = ["ModelConfig", "PatchGuard"]
