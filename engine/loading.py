"""A trained model for evaluation: its checkpoint, its method, read-out options given at test time, its device."""
import dataclasses

from config import RunConfig
from engine.common import log, resolve_device
from methods import get_method, load_model
from utils.readout import READOUT_KEYS, check_readout


def checkpoint_path(cfg: RunConfig) -> str:
    return cfg.checkpoint or cfg.final_checkpoint


def load_for_evaluation(cfg: RunConfig):
    """(method, model in eval mode on its device, device) from --checkpoint or the run's final checkpoint.

    Read-out options given explicitly (--top_k, --smoothing_sigma, --smoothing_radius) replace the checkpoint's:
    they change no weight. The log says which values are used and where each came from.
    """
    device = resolve_device(cfg.device)
    method, model, _ = load_model(checkpoint_path(cfg), get_method(cfg.method), cfg.method_options.model)
    given = {k: getattr(cfg.eval, k) for k in READOUT_KEYS if getattr(cfg.eval, k) is not None}
    model.cfg = dataclasses.replace(model.cfg, **given)
    check_readout(model.cfg.top_k, model.num_patches, model.cfg.image_size)
    log.info("read-out: %s", ", ".join(f"{k} {getattr(model.cfg, k):g} ({'command line' if k in given else 'checkpoint'})"
                                       for k in READOUT_KEYS))
    return method, model.to(device).eval(), device
