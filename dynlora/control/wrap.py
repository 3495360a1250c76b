"""The PEFT-shaped entry point: ``get_dynamic_model(model, config)``, then ``attach`` once the run's length
is known (``hf.callback.DynloraCallback()`` does that from the Trainer's state).

    model = dynlora.get_dynamic_model(model, dynlora.DynamicLoraConfig(method=NAME, r=8, lora_alpha=16))
    controller = dynlora.attach(model, optimizer, total_steps=1000)   # plain PyTorch / accelerate
    ...  loss.backward(); optimizer.step(); controller.step(); optimizer.zero_grad()

Like ``peft.get_peft_model`` it freezes the base and adds adapters in place (the model object is the
same one, so any Trainer, TRL's included, takes it as it is). The config travels on the model as
``model.dynlora_config``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, adapters, inject, match_targets
from dynlora.decide.allocate import even_ranks
from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.methods.peft_configs import DynamicLoraConfig

CONFIG_ATTR = "dynlora_config"
# transformers' Trainer refuses to train a quantized model unless this flag (which its own PEFT integration sets)
# says trainable adapters sit on it; it checks the flag when it is built, and afterwards the flag would send its
# checkpoints through that integration, which knows nothing of dynlora's adapters: DynloraCallback clears it then
TRAINABLE_ON_QUANTIZED = "_hf_peft_config_loaded"


def _rank_pattern(names: Sequence[str], config: DynamicLoraConfig) -> dict[str, int]:
    """The ranks ``config`` gives the adapters ``names`` where they are not ``r``: an even split of
    ``rank_budget`` when there is one."""
    if config.rank_budget is None:
        return {}
    try:
        return even_ranks(names, config.rank_budget, registry.get(config.method).min_rank(config.method_config))
    except ValueError as err:
        raise DynloraError(f"rank_budget {config.rank_budget}: {err}") from None


def adapter_config(model: nn.Module, config: DynamicLoraConfig) -> AdapterConfig:
    """What ``inject`` needs for ``config``: the method's gates and fades, an even split of the budget."""
    spec = registry.get(config.method)
    pattern = _rank_pattern(match_targets(model, config.target_modules), config)
    needs = spec.needs(config.method_config)
    return AdapterConfig(rank=config.r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                         targets=config.target_modules, use_gate=needs.gate, rank_pattern=pattern,
                         input_gate=needs.input_gate, input_gate_bias=needs.input_gate_bias, fade=needs.fade,
                         dtype=config.adapter_dtype, capacity=config.capacity)


def get_dynamic_model(model: nn.Module, config: DynamicLoraConfig) -> nn.Module:
    """Freeze ``model`` and give it the adapters ``config`` describes; returns the same model."""
    if not isinstance(config, DynamicLoraConfig):
        raise DynloraError(f"config {type(config).__name__} is not a dynlora config; use dynlora.DynamicLoraConfig "
                           "or a method's own class, dynlora.<Method>LoraConfig")
    if adapters(model):
        raise DynloraError("the model has dynlora adapters already")
    inject(model, adapter_config(model, config), generator=torch.Generator().manual_seed(config.seed))
    setattr(model, CONFIG_ATTR, config)
    if getattr(model, "is_quantized", False):
        setattr(model, TRAINABLE_ON_QUANTIZED, True)
    return model


def attach(model: nn.Module, optimizer: object | None = None, total_steps: int | None = None) -> Controller:
    """The controller of a ``get_dynamic_model`` model for a run of ``total_steps`` optimizer steps."""
    config = getattr(model, CONFIG_ATTR, None)
    if not isinstance(config, DynamicLoraConfig):
        raise DynloraError("the model was not made by dynlora.get_dynamic_model")
    if total_steps is None or total_steps < 1:
        raise DynloraError(f"total_steps {total_steps!r}: the run's number of optimizer steps (>= 1) is needed")
    spec = registry.get(config.method)
    assert spec.build is not None
    # the budget is what the run's starting ranks cost (those ``config`` injected), whatever the ranks are now:
    # on a resume the layers already hold the checkpoint's moved ranks, and a budget recounted from them (less
    # the gates' cost) would be another one, to which the controller would trim trained ranks
    names = list(adapters(model))
    pattern = _rank_pattern(names, config)
    return Controller(model, spec.build(config.method_config, total_steps), optimizer=optimizer, seed=config.seed,
                      budget_unit=config.budget_unit, budget_ranks={n: pattern.get(n, config.r) for n in names})
