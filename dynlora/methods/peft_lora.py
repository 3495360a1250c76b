"""PEFT's own LoRA on the same targets, rank and alpha: the baseline every compare divides by.

With ``rank_pattern`` it is plain PEFT LoRA trained from scratch with the per-module ranks another run
learned (``dynlora export RUN --rank-pattern-only``): rank discovery, measured as PEFT would use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dynlora.core.inject import peft_task_type
from dynlora.errors import DynloraError
from dynlora.methods.base import MethodSpec, Prepared
from dynlora.methods.config import check_knobs, knob
from dynlora.methods.peft_common import peft_budget, peft_flops, peft_ranks, peft_targets
from dynlora.methods.registry import register

if TYPE_CHECKING:
    from dynlora.methods.settings import AdapterSettings


@dataclass(frozen=True)
class PeftLoraConfig:
    """``rank_pattern``: a folder holding the ``adapter_config.json`` that ``dynlora export --rank-pattern-only``
    wrote (per-module ranks and alphas); None: every target at the run's rank."""

    rank_pattern: str | None = knob(None, "a folder with a rank-pattern adapter_config.json (dynlora export "
                                          "--rank-pattern-only): train with those per-module ranks", type=str)

    def __post_init__(self) -> None:
        check_knobs(self)
        if self.rank_pattern is not None and not (Path(self.rank_pattern) / "adapter_config.json").is_file():
            raise DynloraError(f"rank_pattern {self.rank_pattern!r} holds no adapter_config.json; write one with "
                               "dynlora export RUN --output DIR --rank-pattern-only")


def lora_config(model: nn.Module, settings: AdapterSettings, config: PeftLoraConfig | None, targets: list[str]) -> Any:
    """The ``peft.LoraConfig``: uniform over ``targets``, or the rank pattern's ranks, alphas and targets."""
    from peft import LoraConfig

    task = peft_task_type(model) or "SEQ_CLS"
    if config is None or config.rank_pattern is None:
        return LoraConfig(task_type=task, r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                          target_modules=targets)
    found = LoraConfig.from_pretrained(config.rank_pattern)
    unknown = sorted(set(found.target_modules) - set(targets))
    if unknown:
        raise DynloraError(f"rank_pattern {config.rank_pattern!r} names modules this run does not target: "
                           f"{', '.join(unknown[:3])}")
    return LoraConfig(task_type=task, r=found.r, lora_alpha=found.lora_alpha, lora_dropout=settings.dropout,
                      target_modules=sorted(found.target_modules), rank_pattern=dict(found.rank_pattern),
                      alpha_pattern=dict(found.alpha_pattern))


def prepare(model: nn.Module, settings: AdapterSettings, total_steps: int, seed: int) -> Prepared:
    from peft import get_peft_model

    targets = peft_targets(model, settings)
    budget = peft_budget(model, targets, settings)  # before PEFT wraps the targets
    lora = lora_config(model, settings, settings.method_config, targets)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora)
    return Prepared(peft_model, lambda folder, gate_means=None: peft_model.save_pretrained(str(folder)),
                    ranks=lambda: peft_ranks(peft_model), flops=lambda: peft_flops(peft_model),
                    budget=budget)


SPEC = register(MethodSpec(
    name="peft-lora",
    help="PEFT's LoRA (baseline)",
    prepare=prepare,
    config=PeftLoraConfig,
    static=True,
    baseline=True,
    compare_default=True,
))
