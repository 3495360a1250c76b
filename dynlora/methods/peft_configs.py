"""PEFT-shaped configs: ``LoraConfig``'s field names plus one dynamic method's knobs.

``DynamicLoraConfig(method="l1ra", r=8, lora_alpha=16, target_modules="all-linear")`` names any native
method (``name`` or ``name:variant``); ``config_class("l1ra")`` is the same with L1RA's knobs as fields
(``L1RALoraConfig(r=8, lam=0.5, lr_c=0.02)``), generated from the registry, so a new method gets its
class too. Both are frozen and checked on construction; ``method_config`` is the method's own config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from dynlora.core.count import check_budget_unit
from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.methods.config import knobs


@dataclass(frozen=True)
class DynamicLoraConfig:
    """Adapters as PEFT's ``LoraConfig`` describes them, and the dynamic method that moves their ranks."""

    method: str = "lora"  # a native method: name or name:variant
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"  # "all-linear", names, or a regex
    rank_budget: int | None = None  # total rank over all adapters (default r x number of adapters)
    budget_unit: str = "rank"  # what the budget conserves: rank, params or flops (plain LoRA's cost of those ranks)
    seed: int = 0  # new ranks' initialisation and the method's random draws
    adapter_dtype: str = "float32"  # the adapters' own weights: float32 masters (as PEFT), bfloat16, float16, base
    method_config: Any = None  # the method's config, a dict of its fields, or None for its defaults

    _knob_names: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        spec = registry.get(self.method)
        if spec.build is None:
            valid = [s.name for s in registry.specs() if s.build is not None]
            raise DynloraError(f"method {self.method!r} is a PEFT baseline, not a dynamic method; "
                               f"valid: {', '.join(valid)}")
        for name, ok in (("r", self.r > 0), ("lora_alpha", self.lora_alpha > 0),
                         ("lora_dropout", 0 <= self.lora_dropout < 1),
                         ("rank_budget", self.rank_budget is None or self.rank_budget > 0)):
            if not ok:
                raise DynloraError(f"{name} {getattr(self, name)!r} is out of range")
        check_budget_unit(self.budget_unit)
        values = self.method_config
        if self._knob_names:
            values = {name: getattr(self, name) for name in self._knob_names}
        if isinstance(values, dict) and values and spec.config is None:
            raise DynloraError(f"method {self.method!r} has no settings; got {sorted(values)}")
        object.__setattr__(self, "method_config", registry.resolve_config(self.method, values))
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))


def config_class(method: str) -> type[DynamicLoraConfig]:
    """``DynamicLoraConfig`` for one method, its knobs as fields with their defaults (``L1RALoraConfig``)."""
    spec = registry.get(method)
    fields: list[tuple[str, Any, Any]] = [("method", str, dataclasses.field(default=spec.name))]
    names: list[str] = []
    if spec.config is not None:
        for f, _ in knobs(spec.config):
            fields.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
            names.append(f.name)
    stem = spec.config.__name__.removesuffix("Config") if spec.config is not None else "Static"
    cls = dataclasses.make_dataclass(f"{stem}LoraConfig", fields, bases=(DynamicLoraConfig,), frozen=True,
                                     namespace={"_knob_names": tuple(names), "__module__": __name__,
                                                "__doc__": f"PEFT-shaped config of method {spec.name!r}: "
                                                           f"{spec.help}"})
    return cls


def config_classes() -> dict[str, type[DynamicLoraConfig]]:
    """Every native method's class, by class name (``L1RALoraConfig``, ``AdaptiveLoraConfig``, ...)."""
    classes = [config_class(s.name) for s in registry.specs() if s.build is not None]
    return {c.__name__: c for c in classes}
