"""What a ``--method`` name builds: the adapted model, its Trainer callbacks, and how to save it.

dynlora's own methods go through ``inject`` + ``Controller``; the baselines ``peft-lora`` and
``peft-adalora`` go through the real ``peft`` package on the same targets, rank and alpha, so that
``dynlora compare`` sets them side by side on one budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback

from dynlora.adaptive import Adaptive, AdaptiveConfig
from dynlora.allocate import even_ranks
from dynlora.callback import DynloraCallback
from dynlora.controller import Controller, Method
from dynlora.errors import DynloraError
from dynlora.export import export_peft, peft_task_type
from dynlora.inject import AdapterConfig, adapter_flops_per_token, inject, match_targets
from dynlora.l1ra import L1RA, gate_param_groups
from dynlora.module_alloc import ModuleAlloc, ModuleAllocConfig, parse_variant

if TYPE_CHECKING:
    from dynlora.train import TrainOptions


@dataclass
class Prepared:
    """An adapted model ready for the Trainer."""

    model: nn.Module
    callbacks: list[TrainerCallback]
    save_adapter: Callable[..., Any]  # (folder, gate_means=None) -> writes a PEFT adapter folder
    controller: Controller | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    budget: int = 0  # the total rank the method is held to (compare requires it equal across methods)
    param_groups: list[dict[str, Any]] | None = None  # own optimizer groups (L1RA's gate lr), else Trainer's

    def ranks(self) -> dict[str, int]:
        """Current rank of every adapted module (effective rank for AdaLoRA)."""
        if self.controller is not None:
            return self.controller.ranks()
        return peft_ranks(self.model)

    def adapter_flops(self) -> int:
        """Forward FLOPs per token of all adapter paths at their current ranks."""
        if self.controller is not None:
            return adapter_flops_per_token(self.model)
        return peft_flops(self.model)


# method name -> factory(options, total optimizer steps) -> Method (None: static LoRA)
MethodFactory = Callable[["TrainOptions", int], Method | None]
DYNLORA_METHODS: dict[str, MethodFactory] = {
    "lora": lambda opts, total_steps: None,
    "l1ra": lambda opts, total_steps: L1RA(opts.l1ra, total_steps),
    "module-alloc": lambda opts, total_steps: ModuleAlloc(_module_alloc_config(opts), total_steps),
    "adaptive": lambda opts, total_steps: Adaptive(adaptive_config(opts), total_steps),
}


def adaptive_config(opts: "TrainOptions") -> AdaptiveConfig:
    """``adaptive:no-gate`` / ``adaptive:gate`` switch the input gate of ``opts.adaptive``."""
    _, _, variant = opts.method.partition(":")
    if variant in ("gate", "no-gate"):
        return replace(opts.adaptive, input_gate=variant == "gate")
    if variant:
        raise DynloraError(f"method {opts.method!r}: adaptive variants are adaptive:gate and adaptive:no-gate")
    return opts.adaptive


def _module_alloc_config(opts: "TrainOptions") -> ModuleAllocConfig:
    """``--method module-alloc:<strategy>[-<score>]`` overrides the strategy / score of ``opts.module_alloc``."""
    _, _, variant = opts.method.partition(":")
    return parse_variant(variant, opts.module_alloc) if variant else opts.module_alloc


VARIANTS = {"module-alloc": _module_alloc_config, "adaptive": adaptive_config}  # methods that take name:variant


GATED = {"l1ra"}  # methods whose adapters carry a per-rank gate


def _min_rank(opts: "TrainOptions", base: str) -> int:
    return {"l1ra": opts.l1ra.min_rank, "adaptive": opts.adaptive.min_rank}.get(base, 1)


def adapter_config(model: nn.Module, opts: "TrainOptions") -> AdapterConfig:
    """The injection config for ``opts``: gates for gated methods, an even split of ``rank_budget``."""
    base = opts.method.split(":")[0]
    pattern: dict[str, int] = {}
    if opts.rank_budget is not None:
        names = match_targets(model, opts.targets)
        try:
            pattern = even_ranks(names, opts.rank_budget, _min_rank(opts, base))
        except ValueError as err:
            raise DynloraError(f"rank_budget {opts.rank_budget}: {err}") from None
    adaptive = adaptive_config(opts) if base == "adaptive" else None
    return AdapterConfig(rank=opts.rank, alpha=opts.alpha, dropout=opts.dropout, targets=opts.targets,
                         use_gate=base in GATED or (adaptive is not None and adaptive.score == "gate"),
                         rank_pattern=pattern, input_gate=adaptive is not None and adaptive.input_gate,
                         input_gate_bias=opts.adaptive.input_gate_bias)


def prepare_dynlora(model: nn.Module, opts: "TrainOptions", total_steps: int) -> Prepared:
    inject(model, adapter_config(model, opts), generator=torch.Generator().manual_seed(opts.seed))
    method = DYNLORA_METHODS[opts.method.split(":")[0]](opts, total_steps)
    controller = Controller(model, method, seed=opts.seed)
    groups = None
    if opts.method.split(":")[0] == "l1ra":
        groups = gate_param_groups(model, opts.lr, opts.l1ra.lr_c)

    def save(folder: Path, gate_means: Any = None) -> Path:
        return export_peft(model, folder, opts.dropout, gate_means=gate_means)

    return Prepared(model, [DynloraCallback(controller)], save, controller, budget=sum(controller.ranks().values()),
                    param_groups=groups)


# ---- PEFT baselines -------------------------------------------------------------------------------

def _peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0}


def peft_ranks(model: nn.Module) -> dict[str, int]:
    """Rank per PEFT LoRA / AdaLoRA module; AdaLoRA counts its unmasked (non-zero E) ranks."""
    ranks = {}
    for name, module in _peft_layers(model).items():
        key = next(iter(module.lora_A))
        if hasattr(module, "lora_E") and key in module.lora_E:
            ranks[name] = int(torch.count_nonzero(module.lora_E[key]).item())
        else:
            ranks[name] = int(module.r[key])
    return ranks


def peft_flops(model: nn.Module) -> int:
    """Forward FLOPs per token of PEFT adapters as computed: AdaLoRA masks ranks but still multiplies them."""
    total = 0
    for module in _peft_layers(model).values():
        key = next(iter(module.lora_A))
        a = module.lora_A[key]
        rank = (a.weight if hasattr(a, "weight") else a).shape[0]
        if rank:
            total += 2 * rank * (module.in_features + module.out_features) + module.out_features
    return total


class AdaLoraStep(TrainerCallback):
    """Calls PEFT AdaLoRA's ``update_and_allocate`` after each optimizer step (a plain Trainer never does)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model.base_model.update_and_allocate(state.global_step)
        self.calls += 1


def _task_type(model: nn.Module) -> str:
    return peft_task_type(model) or "SEQ_CLS"


def _peft_targets(model: nn.Module, opts: "TrainOptions") -> list[str]:
    """The PEFT baselines' target modules; they hold every adapter at ``rank``, so a ``rank_budget`` must match."""
    targets = match_targets(model, opts.targets)
    if opts.rank_budget is not None and opts.rank_budget != opts.rank * len(targets):
        raise DynloraError(f"rank_budget {opts.rank_budget}: {opts.method} gives each of the {len(targets)} adapters "
                           f"rank {opts.rank} (budget {opts.rank * len(targets)}); set its budget with --rank instead")
    return targets


def prepare_peft_lora(model: nn.Module, opts: "TrainOptions", total_steps: int) -> Prepared:
    from peft import LoraConfig, get_peft_model

    targets = _peft_targets(model, opts)
    config = LoraConfig(task_type=_task_type(model), r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
                        target_modules=targets)
    torch.manual_seed(opts.seed)
    peft_model = get_peft_model(model, config)
    return Prepared(peft_model, [], lambda folder, gate_means=None: peft_model.save_pretrained(str(folder)),
                    budget=opts.rank * len(targets))


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """tinit / tfinal / deltaT from the run length: 10% warm-up, 20% final, ~20 allocations between."""
    tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": max(1, (total_steps - tinit - tfinal) // 20),
            "total_step": total_steps}


def prepare_peft_adalora(model: nn.Module, opts: "TrainOptions", total_steps: int) -> Prepared:
    from peft import AdaLoraConfig, get_peft_model

    targets = _peft_targets(model, opts)
    init_r = max(opts.rank + 1, round(1.5 * opts.rank))
    config = AdaLoraConfig(task_type=_task_type(model), init_r=init_r, target_r=opts.rank, lora_alpha=opts.alpha,
                           lora_dropout=opts.dropout, target_modules=targets, **adalora_schedule(total_steps))
    torch.manual_seed(opts.seed)
    peft_model = get_peft_model(model, config)
    step = AdaLoraStep()
    return Prepared(peft_model, [step], lambda folder, gate_means=None: peft_model.save_pretrained(str(folder)),
                    extra={"adalora": step}, budget=opts.rank * len(targets))


RECIPES: dict[str, Callable[[nn.Module, "TrainOptions", int], Prepared]] = {
    "lora": prepare_dynlora,
    "l1ra": prepare_dynlora,
    "module-alloc": prepare_dynlora,
    "adaptive": prepare_dynlora,
    "peft-lora": prepare_peft_lora,
    "peft-adalora": prepare_peft_adalora,
}


def method_names() -> list[str]:
    return sorted(set(RECIPES) | set(DYNLORA_METHODS))


def check_method(opts: "TrainOptions") -> None:
    """An error naming ``opts.method`` if it is unknown or carries a variant its method does not take."""
    base, _, variant = opts.method.partition(":")
    if base not in method_names():
        raise DynloraError(f"unknown method {opts.method!r}; valid: {', '.join(method_names())}")
    if variant and base not in VARIANTS:
        raise DynloraError(f"method {opts.method!r}: only module-alloc (module-alloc:topk) and adaptive "
                           "(adaptive:no-gate) take a variant")
    if variant:
        VARIANTS[base](opts)  # the same parser the method uses names a bad strategy, score or gate


def prepare(model: nn.Module, opts: "TrainOptions", total_steps: int) -> Prepared:
    """Build the adapted model for ``opts.method`` (``name`` or ``name:variant``)."""
    base = opts.method.split(":")[0]
    recipe = RECIPES.get(base, prepare_dynlora if base in DYNLORA_METHODS else None)
    if recipe is None:
        raise KeyError(opts.method)
    return recipe(model, opts, total_steps)
