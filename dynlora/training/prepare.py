"""Build the adapted model for a run's method: dynlora's adapters + controller, or the method's own way.

A native method (``MethodSpec.build``) gets adapters injected with what it needs (gates, input gate,
fade), an even split of the rank budget, and a ``Controller`` around its method object. Any other
method (the PEFT baselines) prepares the model itself (``MethodSpec.prepare``), reading the training
split too where it says so (``MethodSpec.reads_data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dynlora.control.wrap import attach, get_dynamic_model
from dynlora.core.count import adapter_flops_per_token
from dynlora.errors import DynloraError
from dynlora.io.export import export_peft
from dynlora.methods import registry
from dynlora.methods.base import MethodSpec, Prepared, TrainData
from dynlora.methods.peft_configs import DynamicLoraConfig
from dynlora.training.config import RunConfig


def prepare_native(model: nn.Module, config: RunConfig, spec: MethodSpec, total_steps: int) -> Prepared:
    """Inject dynlora adapters and wrap the method in a controller (what ``get_dynamic_model`` does)."""
    adapters, trainer = config.adapters, config.trainer
    get_dynamic_model(model, DynamicLoraConfig.of(adapters, trainer.seed))
    controller = attach(model, total_steps=total_steps)
    groups = (spec.param_groups(model, trainer.learning_rate, adapters.method_config, trainer.weight_decay)
              if spec.param_groups is not None else None)

    def save(folder: Path, gate_means: Any = None) -> Path:
        return export_peft(model, folder, adapters.dropout, gate_means=gate_means, dtype=trainer.export_dtype)

    return Prepared(model, save, ranks=controller.ranks, flops=lambda: adapter_flops_per_token(model),
                    budget=controller.budget.total + sum(controller.budget.fixed.values()),  # plain LoRA's cost
                    controller=controller, param_groups=groups)


def prepare(model: nn.Module, config: RunConfig, total_steps: int, data: TrainData | None = None) -> Prepared:
    """The adapted model for the run's method (``name`` or ``name:variant``); ``data``: the run's training split,
    for a method that reads it while it prepares."""
    method, checkpointing = config.adapters.method, bool(config.trainer.activation_checkpointing)
    spec = registry.get(method)
    if spec.reads_data and data is None:
        raise DynloraError(f"method {method!r} initialises its adapters from training batches; "
                           "prepare it with the run's training data")
    if getattr(model, "is_quantized", False):
        from peft import prepare_model_for_kbit_training

        # PEFT's own preparation: non-quantized weights (norms, embeddings, head) to float32, input grads on
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    if checkpointing and hasattr(model, "enable_input_require_grads"):
        # as PEFT does: with a frozen embedding a checkpointed block's input would need no grad, and
        # reentrant checkpointing would then drop the adapters' gradients
        model.enable_input_require_grads()
    if spec.prepare is not None:
        extra = {"data": data} if spec.reads_data else {}
        return spec.prepare(model, config.adapters, total_steps, config.trainer.seed, **extra)
    return prepare_native(model, config, spec, total_steps)
