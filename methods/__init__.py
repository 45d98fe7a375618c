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


def load_model(path: str, fallback=None):
    """(model, run config) from one of our checkpoints (its own method and config), or (model, None) from an
    official PatchGuard state dict, whose architecture comes from `fallback` (a PatchGuard ModelConfig)."""
    from utils.checkpoint import FORMAT, load_state, read_checkpoint
    from utils.errors import UserError
    ckpt = read_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        run_config = ckpt["config"]
        method = get_method(run_config.get("method", "patchguard"))
        cfg, state = method.config_from_dict(run_config["model"]), ckpt["model"]
    elif any(k.startswith("feature_extractor.pretrained_model.") for k in ckpt):
        method, cfg, state, run_config = PATCHGUARD, fallback, ckpt, None
    else:
        raise UserError(f"{path} is neither one of our checkpoints nor an official PatchGuard state dict")
    model = method.build(cfg)
    load_state(model, state, path)
    return model, run_config


def get_method(name: str):
    from utils.errors import UserError
    if name not in METHODS:
        raise UserError(f"unknown method '{name}': expected one of {', '.join(METHODS)}")
    return METHODS[name]
