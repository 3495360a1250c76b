"""The method registry: every method registers its ``MethodSpec`` once; shared code asks here.

The built-in methods register when ``dynlora.methods`` is imported (its ``__init__`` imports each
module), which happens before this module is used. ``dynlora train``'s method flags, ``dynlora
compare``'s method list and the summary's baseline all come from the registry, so a new method is
one module that calls ``register`` (and, to ship with dynlora, one import line in
``methods/__init__.py``). Method names may carry a variant: ``name:variant``.
"""

from __future__ import annotations

from typing import Any

from dynlora.errors import DynloraError
from dynlora.methods.base import MethodSpec
from dynlora.methods.config import flag_of, knobs

_SPECS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; its name must be new and its shared flags must agree with other methods' defaults."""
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is registered already")
    if spec.config is not None:
        for f, _ in knobs(spec.config):
            for other in _SPECS.values():
                for g, _ in knobs(other.config) if other.config is not None else ():
                    if flag_of(g) == flag_of(f) and g.default != f.default:
                        raise ValueError(f"{spec.name}: {flag_of(f)} defaults to {f.default!r}, "
                                         f"but {other.name} defaults it to {g.default!r}")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method take it out again)."""
    _SPECS.pop(name, None)


def specs() -> list[MethodSpec]:
    """Every registered method, by name."""
    return [_SPECS[n] for n in sorted(_SPECS)]


def names() -> list[str]:
    return [s.name for s in specs()]


def split(method: str) -> tuple[str, str]:
    """``module-alloc:topk`` -> ``("module-alloc", "topk")``."""
    base, _, variant = method.partition(":")
    return base, variant


def get(method: str) -> MethodSpec:
    """The spec of ``name`` or ``name:variant``; a one-line error naming the valid ones."""
    base, variant = split(method)
    if base not in _SPECS:
        raise DynloraError(f"unknown method {method!r}; valid: {', '.join(names())}")
    spec = _SPECS[base]
    if variant and spec.variant is None:
        takes = [f"{s.name} ({s.variant_help})" for s in specs() if s.variant is not None]
        raise DynloraError(f"method {method!r}: only {' and '.join(takes)} take a variant")
    return spec


def resolve_config(method: str, value: Any) -> Any:
    """The config of ``method`` (``name:variant``) from ``value``: None (its defaults), a dict of its fields,
    or an instance of its config class (the variant applied); anything else is a one-line error."""
    spec = get(method)
    _, variant = split(method)
    if isinstance(value, dict):
        return spec.make_config(variant, **value)
    if value is None:
        return spec.make_config(variant)
    if spec.config is None or not isinstance(value, spec.config):
        raise DynloraError(f"method_config {type(value).__name__} is not the config of method {method!r}"
                           f" ({spec.config.__name__ if spec.config else 'none'})")
    return spec.variant(variant, value) if variant and spec.variant is not None else value


def _flagged(flag: str) -> MethodSpec:
    found = [s for s in specs() if getattr(s, flag)]
    if len(found) != 1:
        raise RuntimeError(f"exactly one method must be marked {flag}, found {[s.name for s in found]}")
    return found[0]


def default_method() -> str:
    """What ``dynlora train`` runs without ``--method``."""
    return _flagged("default").name


def baseline() -> str:
    """The method compare's ratios divide by."""
    return _flagged("baseline").name


def compare_defaults() -> tuple[str, ...]:
    """``dynlora compare``'s methods when none are given."""
    return tuple(s.name for s in specs() if s.compare_default)
