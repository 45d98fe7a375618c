"""Methods by name. A method is one small object with the parts that differ between methods; the engine calls
these and nothing else method-specific:

    name, adv_train_default, pseudo_anomaly_default
    model_config(args) / config_from_dict(d)   its model options (a frozen dataclass, stored in checkpoints)
    build(model_config, backbone_weights)      the nn.Module: forward(images in [0, 1]) -> outputs (B, ...)
                                               with image_scores(outputs) -> (B,) and patch_map(outputs) -> (B, N)
    train_step(model, batch, optimizer, cfg, device) -> float
    attack_loss(outputs, patch_labels) -> (B,)  what test attacks ascend
    after_training(model, dataset, cfg, device)  e.g. CaSA's attention statistics (stored in the model's buffers)
    adapter(model, cfg)                        test-time adaptation, or None

A new method is a file here (plus its model, generator and loss in models/, datasets/, losses/) and one line below.
"""
from methods.casa import CASA
from methods.patchguard import PATCHGUARD

METHODS = {m.name: m for m in (PATCHGUARD, CASA)}


def get_method(name: str):
    from utils.errors import UserError
    if name not in METHODS:
        raise UserError(f"unknown method '{name}': expected one of {', '.join(METHODS)}")
    return METHODS[name]
