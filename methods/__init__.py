"""Methods by name (the contract is methods/base.py). A new method is a file here and one `register` call."""
from methods.base import Method, Outputs
from methods.casa import CASA
from methods.patchguard import PATCHGUARD
from utils.errors import UserError

METHODS = {m.name: m for m in (PATCHGUARD, CASA)}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}': expected one of {', '.join(METHODS)}")
    return METHODS[name]


def stored_model_options(run_config: dict) -> dict:
    """A checkpoint's model options as a plain dict (runs before the method contract kept them at the top)."""
    options = run_config.get("method_options")
    return options["model"] if isinstance(options, dict) and "model" in options else run_config.get("model")


def load_model(path: str, method: Method, fallback_model_options=None):
    """(method, model, run config dict or None) from one of our checkpoints, which names its own method and
    options, or from a foreign state dict `method` recognises (e.g. an official PatchGuard release), whose
    architecture comes from `fallback_model_options`. `method` is what the run asked for: a checkpoint of another
    method is refused."""
    from utils.checkpoint import FORMAT, load_state, read_checkpoint
    from utils.options import from_plain_dict
    ckpt = read_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        run_config = ckpt["config"]
        stored = get_method(run_config.get("method", "patchguard"))
        if stored is not method:
            raise UserError(f"{path} holds a {stored.name} model but the run asks for --method {method.name}; "
                            f"pass --method {stored.name}")
        model_options = from_plain_dict(method.model_options_class, stored_model_options(run_config))
        state = ckpt["model"]
    else:
        run_config = None
        owner = next((m for m in METHODS.values() if m.recognises(ckpt)), None)
        if owner is None:
            raise UserError(f"{path} is neither one of our checkpoints nor a state dict any method recognises")
        if owner is not method:
            raise UserError(f"{path} is a {owner.name} state dict but the run asks for --method {method.name}; "
                            f"pass --method {owner.name}")
        model_options, state = fallback_model_options, ckpt
    model = method.build_model(model_options)
    load_state(model, state, path)
    return method, model, run_config


__all__ = ["METHODS", "Method", "Outputs", "get_method", "load_model", "register", "stored_model_options"]
