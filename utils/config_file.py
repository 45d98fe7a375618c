"""JSON config files as argparse defaults: option names as keys, or a run's own nested config.json (any layout
this project has written), with the values checked as the command line would check them."""
import argparse
import json

from utils.errors import UserError


def config_file_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """A JSON config file as parser defaults. Keys are option names as on the command line (`no_reg`, `hf_path`)
    or their destinations (`use_reg`, `backbone`); a flag's key with true means the flag was given."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a JSON object of option names and values")
    if any(isinstance(v, dict) for v in values.values()):
        values = flatten_run_config(values)
    by_dest = {}
    for a in parser._actions:  # a destination's own option first (--precision before its alias --bf16)
        if a.dest not in ("help", "config"):
            by_dest.setdefault(a.dest, a)
    by_option = {o.lstrip("-"): a for a in parser._actions for o in a.option_strings if a.dest not in ("help", "config")}
    unknown = sorted(k for k in values if k not in by_dest and k not in by_option)
    if unknown:
        raise UserError(f"unknown keys in {path}: {', '.join(unknown)} (keys are option names, e.g. epochs, no_reg)")
    defaults = {}
    for key, value in values.items():
        action = by_dest.get(key) or by_option[key]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            value = _strict_bool(value, key, path)
            if key != action.dest:  # the flag's own name: true = the flag was given
                value = action.const if value else parser.get_default(action.dest)
        else:
            value = _coerce(action, value, path)
        defaults[action.dest] = value
    return defaults


def _strict_bool(value, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{where}: '{key}' must be true or false, got {value!r}")


RUN_ONLY_KEYS = {"precision_reason", "mode", "resume", "overwrite", "recompute", "dsc_dropout", "run_dirs", "devices",
                 "use_data_prep", "use_weight_prep"}  # not carried over from a run's config.json
RENAMED = {"attack_mode": "train_attack_mode", "map_layers": "casa_map_layers", "head_hidden": "casa_head_hidden",
           "score": "casa_score", "seg_loss": "casa_seg_loss", "seg_weight": "casa_seg_weight"}
IN_255_UNITS = {"epsilon_train", "epsilon_test", "epsilon_visualization"}


def flatten_run_config(run: dict) -> dict:
    """A run directory's config.json (nested, eps in [0, 1]) as option defaults (flat, eps in 1/255 units).
    Any nesting: today's layout (method_options.model, data.generator) and older ones (model, casa) alike."""
    flat = {}
    for k, v in run.items():
        if isinstance(v, dict):
            flat.update(flatten_run_config(v))
        elif k == "bf16" and isinstance(v, bool):  # runs before --precision: what ran
            flat["precision"] = "bf16" if v else "fp32"
        elif k not in RUN_ONLY_KEYS and v is not None:
            if k in IN_255_UNITS:
                v = [x * 255 for x in v] if isinstance(v, (list, tuple)) else v * 255
            flat[RENAMED.get(k, k)] = v
    return flat


def _coerce(action: argparse.Action, value, where: str):
    """A config-file value as the command line would have parsed it (lists for nargs options, typed items)."""
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]
    if action.type is not None:
        try:
            items = [action.type(v) for v in items]
        except (TypeError, ValueError):
            raise UserError(f"{where}: '{action.dest}' must be {action.type.__name__}"
                            f"{' values' if many else ''}, got {value!r}") from None
    if action.choices is not None and any(v not in action.choices for v in items):
        raise UserError(f"{where}: '{action.dest}' must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise UserError(f"{where}: '{action.dest}' takes {action.nargs} values, got {value!r}")
    if many:
        return items
    if len(items) != 1:
        raise UserError(f"{where}: '{action.dest}' takes one value, got {value!r}")
    return items[0]
