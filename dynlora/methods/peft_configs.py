"""PEFT-shaped configs: ``LoraConfig``'s field names plus one dynamic method's knobs.

``DynamicLoraConfig(method="l1ra", r=8, lora_alpha=16, target_modules="all-linear")`` names any native
method (``name`` or ``name:variant``); ``L1RALoraConfig(r=8, lam=0.5, lr_c=0.02)`` is the same with L1RA's
knobs as fields: the built-in methods' classes are written out in ``methods/lora_configs.py``, and
``methods/config_classes.py`` finds (or, for a method you register yourself, makes) a method's class. All
are frozen and checked on construction; ``method_config`` is the method's own config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.methods.settings import AdapterSettings


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
    capacity: int | None = None  # rank slots each adapter holds for good (static shapes); None: follow the rank
    method_config: Any = None  # the method's config, a dict of its fields, or None for its defaults

    _knob_names: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        spec = registry.get(self.method)
        if spec.build is None:
            valid = [s.name for s in registry.specs() if s.build is not None]
            raise DynloraError(f"method {self.method!r} is a PEFT baseline, not a dynamic method; "
                               f"valid: {', '.join(valid)}")
        values = self.method_config
        if self._knob_names:
            values = {name: getattr(self, name) for name in self._knob_names}
        if isinstance(values, dict) and values and spec.config is None:
            raise DynloraError(f"method {self.method!r} has no settings; got {sorted(values)}")
        object.__setattr__(self, "method_config", self.settings(values).method_config)
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def of(cls, settings: AdapterSettings, seed: int) -> DynamicLoraConfig:
        """``settings`` under PEFT's names (a run's adapters, as ``get_dynamic_model`` takes them)."""
        return cls(method=settings.method, r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                   target_modules=settings.targets, rank_budget=settings.rank_budget,
                   budget_unit=settings.budget_unit, seed=seed, adapter_dtype=settings.adapter_dtype,
                   capacity=settings.capacity, method_config=settings.method_config)

    def settings(self, method_config: Any = None) -> AdapterSettings:
        """The same adapters under dynlora's names (checked there: one set of rules for both)."""
        try:
            return AdapterSettings(method=self.method, rank=self.r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                                   targets=self.target_modules, rank_budget=self.rank_budget,
                                   budget_unit=self.budget_unit, adapter_dtype=self.adapter_dtype,
                                   capacity=self.capacity,
                                   method_config=self.method_config if method_config is None else method_config)
        except DynloraError as err:  # named as this class names the field
            message = str(err)
            for ours, peft in (("rank ", "r "), ("alpha ", "lora_alpha "), ("dropout ", "lora_dropout ")):
                if message.startswith(ours):
                    message = peft + message[len(ours):]
            raise DynloraError(message) from None
