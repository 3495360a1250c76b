"""Each native method's PEFT-shaped config class (``L1RALoraConfig``, ...): the written one of a built-in
method (``methods/lora_configs.py``), or one made at run time for a method you register yourself."""

from __future__ import annotations

import dataclasses
from typing import Any

from dynlora.methods import lora_configs, registry
from dynlora.methods.config import config_class_name, knobs
from dynlora.methods.peft_configs import DynamicLoraConfig


def config_class(method: str) -> type[DynamicLoraConfig]:
    """``DynamicLoraConfig`` for one method, its knobs as fields with their defaults (``L1RALoraConfig``):
    the written class of a built-in method, else one made now."""
    spec = registry.get(method)
    name = config_class_name(spec.config)
    written = getattr(lora_configs, name, None)
    if written is not None and written.method == spec.name:
        return written
    fields: list[tuple[str, Any, Any]] = [("method", str, dataclasses.field(default=spec.name))]
    names: list[str] = []
    if spec.config is not None:
        for f, _ in knobs(spec.config):
            fields.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
            names.append(f.name)
    cls = dataclasses.make_dataclass(name, fields, bases=(DynamicLoraConfig,), frozen=True,
                                     namespace={"_knob_names": tuple(names), "__module__": __name__,
                                                "__doc__": f"PEFT-shaped config of method {spec.name!r}: "
                                                           f"{spec.help}"})
    return cls


def config_classes() -> dict[str, type[DynamicLoraConfig]]:
    """Every native method's class, by class name (``L1RALoraConfig``, ``AdaptiveLoraConfig``, ...)."""
    classes = [config_class(s.name) for s in registry.specs() if s.build is not None]
    return {c.__name__: c for c in classes}
