"""PEFT's own LoRA on the same targets, rank and alpha: the baseline every compare divides by."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynlora.core.inject import peft_task_type
from dynlora.methods.base import AdapterSettings, MethodSpec, Prepared
from dynlora.methods.peft_common import peft_budget, peft_flops, peft_ranks, peft_targets
from dynlora.methods.registry import register


def prepare(model: nn.Module, settings: AdapterSettings, config: Any, total_steps: int) -> Prepared:
    from peft import LoraConfig, get_peft_model

    targets = peft_targets(model, settings)
    budget = peft_budget(model, targets, settings)  # before PEFT wraps the targets
    lora = LoraConfig(task_type=peft_task_type(model) or "SEQ_CLS", r=settings.rank, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout, target_modules=targets)
    torch.manual_seed(settings.seed)
    peft_model = get_peft_model(model, lora)
    return Prepared(peft_model, lambda folder, gate_means=None: peft_model.save_pretrained(str(folder)),
                    ranks=lambda: peft_ranks(peft_model), flops=lambda: peft_flops(peft_model),
                    budget=budget)


SPEC = register(MethodSpec(
    name="peft-lora",
    help="PEFT's LoRA (baseline)",
    prepare=prepare,
    static=True,
    baseline=True,
    compare_default=True,
))
