"""``AdapterSettings``: the adapters of a run and the method that moves their ranks, declared once.

It is the ``adapters`` part of a run's configuration (``dynlora train``'s flags of that group come
from its fields and their help), what a method's preparation reads, and what
``DynamicLoraConfig`` (PEFT's names for the same values) checks itself with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dynlora.core.count import BUDGET_UNITS, check_budget_unit
from dynlora.core.inject import ADAPTER_DTYPES
from dynlora.errors import DynloraError
from dynlora.methods import registry


def _flag(default: Any, help: str, aliases: tuple[str, ...] = (), **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta, **({"aliases": list(aliases)} if aliases else {})})


def _method_help() -> str:
    return "the method: name, or name:variant where a method takes one (dynlora train --help lists them)"


@dataclass(frozen=True)
class AdapterSettings:
    """Which modules get adapters, their rank, scale and budget, and the method (with its config)."""

    _argument_group_name = "adapters"

    method: str = field(default_factory=registry.default_method, metadata={"help": _method_help()})
    rank: int = _flag(8, "LoRA rank r of every adapter", ("--lora_r", "--lora-r"))
    alpha: float = _flag(16.0, "LoRA alpha; the update is scaled by alpha / r", ("--lora_alpha", "--lora-alpha"))
    dropout: float = _flag(0.0, "dropout on the adapters' input", ("--lora_dropout", "--lora-dropout"))
    targets: str | tuple[str, ...] = _flag("all-linear", "all-linear, comma-separated module names, or a regex",
                                           ("--target_modules", "--target-modules"), cli_type=str)
    rank_budget: int | None = _flag(None, "total rank over all adapters, split evenly (default: rank x number of "
                                          "adapters)")
    budget_unit: str = _flag("rank", "what a method that moves ranks conserves: rank (the total rank), params or "
                                     "flops (what plain LoRA of those ranks costs; gates included)",
                             choices=list(BUDGET_UNITS))
    adapter_dtype: str = _flag("float32", "the adapters' weights: float32 (masters), bfloat16, float16, or base",
                               choices=list(ADAPTER_DTYPES))
    capacity: int | None = _flag(None, "rank slots every adapter holds for good, its live ranks masked: parameter "
                                       "shapes never change, so a compiled graph (--torch_compile) survives every "
                                       "rank event; at least every adapter's starting rank (default: none, the "
                                       "parameters follow the rank)")
    # the method's config: an instance, a dict of its fields, or None (its defaults); its knobs are flags of their own
    method_config: Any = field(default=None, metadata={"flag": False})

    def __post_init__(self) -> None:
        # an unknown method or variant, or a config of another method, is named here
        object.__setattr__(self, "method_config", registry.resolve_config(self.method, self.method_config))
        for name, ok in (("rank", isinstance(self.rank, int) and self.rank > 0), ("alpha", self.alpha > 0),
                         ("dropout", 0 <= self.dropout < 1),
                         ("rank_budget", self.rank_budget is None or self.rank_budget > 0)):
            if not ok:
                raise DynloraError(f"{name} {getattr(self, name)!r} is out of range")
        if self.capacity is not None and not (isinstance(self.capacity, int) and self.capacity >= 1):
            raise DynloraError(f"capacity {self.capacity!r} is out of range")
        check_budget_unit(self.budget_unit)
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise DynloraError(f"adapter_dtype {self.adapter_dtype!r} is not valid; valid: {', '.join(ADAPTER_DTYPES)}")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
