"""Method config fields that carry their CLI flag, help text and bounds, and the one check of them.

A method's config is a frozen dataclass whose fields are made with ``knob``; its ``__post_init__``
calls ``check_knobs(self)`` (plus any rule that ties fields together). ``cli`` generates the flags of
``dynlora train`` from the same metadata, so a new method adds its flags by declaring its config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from dynlora.errors import DynloraError

_BOUNDS = {"gt": (lambda v, b: v > b, "> {}"), "ge": (lambda v, b: v >= b, ">= {}"),
           "lt": (lambda v, b: v < b, "< {}"), "le": (lambda v, b: v <= b, "<= {}")}


_SAME = object()  # a knob added at a default that keeps what the method did before it existed


def knob(default: Any, help: str, *, flag: str | None = None, type: type | None = None,
         choices: Sequence[str] | None = None, gt: float | None = None, ge: float | None = None,
         lt: float | None = None, le: float | None = None, before: Any = _SAME) -> Any:
    """A dataclass field with CLI and bounds metadata.

    ``flag``: the ``dynlora train`` option (default ``--<field-name>``; methods that share a flag,
    such as ``--min-rank``, share its value). ``type``: the option's type when ``default`` is None.
    ``choices`` / ``gt`` / ``ge`` / ``lt`` / ``le``: checked by ``check_knobs`` (None passes).
    ``before``: the value that matches what the method did before this knob existed, when that is not the
    default (a recorded config without the knob ran at it: ``knob_before``).
    """
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    meta = {"help": help, "flag": flag, "type": type, "choices": tuple(choices) if choices else None,
            "bounds": bounds, "before": default if before is _SAME else before}
    return dataclasses.field(default=default, metadata={"knob": meta})


def knob_before(config_type: type) -> dict[str, Any]:
    """What each knob of a config was, in effect, before it existed: a record that lacks a knob ran at this."""
    return {f.name: meta["before"] for f, meta in knobs(config_type)}


def knobs(config_type: type) -> list[tuple[dataclasses.Field, dict[str, Any]]]:
    """(field, metadata) of every ``knob`` field of a config dataclass, in declaration order."""
    return [(f, f.metadata["knob"]) for f in dataclasses.fields(config_type) if "knob" in f.metadata]


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def type_of(f: dataclasses.Field) -> type:
    """The CLI type of a knob: its ``type`` metadata, else its annotation (``float``, ``int | None``), else the
    type of its default."""
    if f.metadata["knob"]["type"] is not None:
        return f.metadata["knob"]["type"]
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    kinds = [part.strip() for part in annotation.split("|") if part.strip() != "None"]
    if len(kinds) == 1 and kinds[0] in _TYPES:
        return _TYPES[kinds[0]]
    return type(f.default)


def config_class_name(config: type | None) -> str:
    """A method's PEFT-shaped config class: ``L1RAConfig`` -> ``L1RALoraConfig``; no knobs: ``StaticLoraConfig``."""
    return (config.__name__.removesuffix("Config") if config is not None else "Static") + "LoraConfig"


def flag_of(f: dataclasses.Field) -> str:
    """The CLI option of a knob field: ``--l1ra-lambda`` or ``--<name>``."""
    return f.metadata["knob"]["flag"] or "--" + f.name.replace("_", "-")


def _interval(bounds: dict[str, float]) -> str:
    low = f"[{bounds['ge']:g}" if "ge" in bounds else f"({bounds['gt']:g}" if "gt" in bounds else None
    high = f"{bounds['le']:g}]" if "le" in bounds else f"{bounds['lt']:g})" if "lt" in bounds else None
    if low and high:
        return f"in {low}, {high}"
    return " and ".join(_BOUNDS[k][1].format(f"{v:g}") for k, v in bounds.items())


def optional(f: dataclasses.Field) -> bool:
    """Whether a knob may be None (its annotation says ``| None``)."""
    return "None" in str(f.type)


def check_knobs(config: Any) -> None:
    """A ``DynloraError`` naming the first knob whose value is outside its choices or bounds."""
    for f, meta in knobs(type(config)):
        value = getattr(config, f.name)
        if value is None:
            if not optional(f):
                valid = ", ".join(meta["choices"]) if meta["choices"] is not None else f"a {type_of(f).__name__}"
                raise DynloraError(f"{f.name} None is not valid; valid: {valid}")
            continue
        if meta["choices"] is not None and value not in meta["choices"]:
            raise DynloraError(f"{f.name} {value!r} is not valid; valid: {', '.join(meta['choices'])}")
        bounds = meta["bounds"]
        if bounds and (isinstance(value, bool) or not isinstance(value, (int, float))
                       or not all(_BOUNDS[k][0](value, b) for k, b in bounds.items())):
            raise DynloraError(f"{f.name} {value!r} must be {_interval(bounds)}")
