"""What the PEFT baselines share: their targets under dynlora's budget, ranks and FLOPs of PEFT layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dynlora.core.cost import adapter_cost
from dynlora.core.count import linear_lora_cost
from dynlora.core.inject import match_targets
from dynlora.core.linear import in_out_features
from dynlora.errors import DynloraError

if TYPE_CHECKING:
    from dynlora.methods.settings import AdapterSettings


def peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT LoRA / AdaLoRA layers by name (those holding at least one adapter)."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0}


def peft_ranks(model: nn.Module) -> dict[str, int]:
    """Rank per PEFT LoRA / AdaLoRA module; AdaLoRA counts its unmasked (non-zero E) ranks."""
    ranks = {}
    for name, module in peft_layers(model).items():
        key = next(iter(module.lora_A))
        if hasattr(module, "lora_E") and key in module.lora_E:
            ranks[name] = int(torch.count_nonzero(module.lora_E[key]).item())
        else:
            ranks[name] = int(module.r[key])
    return ranks


def peft_flops(model: nn.Module) -> int:
    """Forward FLOPs per token of PEFT adapters as computed: AdaLoRA masks ranks but still multiplies them."""
    total = 0
    for module in peft_layers(model).values():
        key = next(iter(module.lora_A))
        a = module.lora_A[key]
        rank = (a.weight if hasattr(a, "weight") else a).shape[0]
        total += adapter_cost(module.in_features, module.out_features, rank, "flops")
    return total


def peft_budget(model: nn.Module, targets: list[str], settings: AdapterSettings) -> int:
    """What plain LoRA of ``settings.rank`` on every target costs in the run's budget unit."""
    return sum(linear_lora_cost(*in_out_features(model.get_submodule(name)), settings.rank, settings.budget_unit)
               for name in targets)


def peft_targets(model: nn.Module, settings: AdapterSettings) -> list[str]:
    """The baselines' target modules; they hold every adapter at ``rank``, so a ``rank_budget`` must match."""
    targets = match_targets(model, settings.targets)
    if settings.rank_budget is not None and settings.rank_budget != settings.rank * len(targets):
        raise DynloraError(f"rank_budget {settings.rank_budget}: {settings.method} gives each of the {len(targets)} "
                           f"adapters rank {settings.rank} (budget {settings.rank * len(targets)}); set its budget "
                           "with --rank instead")
    return targets
