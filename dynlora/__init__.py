"""dynlora: dynamic LoRA fine-tuning (ranks that move, adapters that switch) that exports plain PEFT LoRA.

``import dynlora`` is cheap: the public names below load their module on first use (PEP 562), so
``dynlora.core`` (torch only) never pulls in transformers or peft.

Layers, lowest first: ``core`` (adapter layer, injection, optimizer surgery, counting) ->
``observe`` (importance trackers) -> ``decide`` (pure allocators, selectors, the schedule) ->
``methods`` (one module per method, and the registry) -> ``control`` (the controller: the only apply
path) -> ``io`` (PEFT export / load, checkpoints) -> ``hf`` (Trainer callback, Trainer, model loading)
-> ``data`` -> ``training`` (one pipeline over task kinds) -> ``tools`` (compare, report, plots,
generate) -> ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what an IDE and a type checker see of the lazily loaded names below
    from dynlora.methods.lora_configs import (AdaptiveLoraConfig, L1RAAllocLoraConfig, L1RALoraConfig,
                                              ModuleAllocLoraConfig, StaticLoraConfig)
    from dynlora.training.arguments import run_config
    from dynlora.training.config import RunConfig

__version__ = "0.1.0"

_PUBLIC = {
    "AdapterConfig": "dynlora.core.inject",
    "LoraLayer": "dynlora.core.layer",
    "adapters": "dynlora.core.inject",
    "inject": "dynlora.core.inject",
    "merge": "dynlora.core.inject",
    "remove": "dynlora.core.inject",
    "unmerge": "dynlora.core.inject",
    "remap_optimizer_state": "dynlora.core.surgery",
    "Resize": "dynlora.decide.plan",
    "Plan": "dynlora.decide.plan",
    "Controller": "dynlora.control.controller",
    "DynloraError": "dynlora.errors",
    "export_peft": "dynlora.io.export",
    "load_peft": "dynlora.io.load",
    "DynloraCallback": "dynlora.hf.callback",
    "DynloraTrainerMixin": "dynlora.hf.trainer",
    "register": "dynlora.methods.registry",
    "DynamicLoraConfig": "dynlora.methods.peft_configs",
    "AdaptiveLoraConfig": "dynlora.methods.lora_configs",
    "L1RALoraConfig": "dynlora.methods.lora_configs",
    "L1RAAllocLoraConfig": "dynlora.methods.lora_configs",
    "ModuleAllocLoraConfig": "dynlora.methods.lora_configs",
    "StaticLoraConfig": "dynlora.methods.lora_configs",
    "get_dynamic_model": "dynlora.control.wrap",
    "attach": "dynlora.control.wrap",
    "RunConfig": "dynlora.training.config",
    "run_config": "dynlora.training.arguments",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    if name.endswith("LoraConfig") and name not in _PUBLIC:  # a method registered at run time: its class
        from dynlora.methods.config_classes import config_classes

        classes = config_classes()
        if name in classes:
            globals()[name] = classes[name]
            return classes[name]
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dynlora' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
