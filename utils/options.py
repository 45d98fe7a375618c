"""Frozen option dataclasses to and from the plain dicts stored in config.json and checkpoints."""
import dataclasses
import typing


def from_plain_dict(cls, d: dict):
    """A frozen dataclass from a plain dict: nested dataclasses rebuilt, lists back to tuples, unknown keys dropped
    (older files may hold options since removed)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, kind = d[f.name], hints.get(f.name)
        if dataclasses.is_dataclass(kind) and isinstance(v, dict):
            v = from_plain_dict(kind, v)
        elif isinstance(v, list):
            v = tuple(v)
        values[f.name] = v
    return cls(**values)
