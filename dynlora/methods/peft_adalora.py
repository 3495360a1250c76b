"""PEFT's AdaLoRA on the same targets and final rank: the dynamic baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dynlora.core.inject import peft_task_type
from dynlora.methods.base import MethodSpec, Prepared
from dynlora.methods.peft_common import peft_budget, peft_flops, peft_ranks, peft_targets
from dynlora.methods.registry import register

if TYPE_CHECKING:
    from dynlora.methods.settings import AdapterSettings


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """tinit / tfinal / deltaT from the run length: 10% warm-up, 20% final, ~20 allocations between."""
    tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": max(1, (total_steps - tinit - tfinal) // 20),
            "total_step": total_steps}


class AdaLoraStep:
    """Calls PEFT AdaLoRA's ``update_and_allocate`` after each optimizer step (a plain Trainer never does)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls = 0

    def __call__(self, step: int) -> None:
        self.model.base_model.update_and_allocate(step)
        self.calls += 1

    _SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def checkpoint_state(self) -> dict[str, Any]:
        """PEFT keeps AdaLoRA's importance scores and rank masks outside any state_dict: without them a
        resumed run would allocate from fresh scores."""
        allocator = self.model.base_model.rankallocator
        config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        return {**{key: dict(getattr(allocator, key)) for key in self._SCORES},
                "rank_pattern": config.rank_pattern, "calls": self.calls}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        allocator = self.model.base_model.rankallocator
        devices = {n: p.device for n, p in self.model.named_parameters()}
        for key in self._SCORES:
            setattr(allocator, key, {n: t.to(devices.get(n, t.device)) for n, t in state[key].items()})
        config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        config.rank_pattern = state["rank_pattern"]
        self.calls = int(state["calls"])


def prepare(model: nn.Module, settings: AdapterSettings, total_steps: int, seed: int) -> Prepared:
    from peft import AdaLoraConfig, get_peft_model

    targets = peft_targets(model, settings)
    budget = peft_budget(model, targets, settings)  # before PEFT wraps the targets
    init_r = max(settings.rank + 1, round(1.5 * settings.rank))
    adalora = AdaLoraConfig(task_type=peft_task_type(model) or "SEQ_CLS", init_r=init_r, target_r=settings.rank,
                            lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
                            **adalora_schedule(total_steps))
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, adalora)
    return Prepared(peft_model, lambda folder, gate_means=None: peft_model.save_pretrained(str(folder)),
                    ranks=lambda: peft_ranks(peft_model), flops=lambda: peft_flops(peft_model),
                    budget=budget, step_hooks=[AdaLoraStep(peft_model)])


SPEC = register(MethodSpec(
    name="peft-adalora",
    help="PEFT's AdaLoRA (baseline)",
    prepare=prepare,
    compare_default=True,
))
