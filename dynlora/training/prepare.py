"""Build the adapted model for a run's method: dynlora's adapters + controller, or the method's own way.

A native method (``MethodSpec.build``) gets adapters injected with what it needs (gates, input gate,
fade), an even split of the rank budget, and a ``Controller`` around its method object. Any other
method (the PEFT baselines) prepares the model itself (``MethodSpec.prepare``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynlora.control.controller import Controller
from dynlora.core.count import adapter_flops_per_token
from dynlora.core.inject import AdapterConfig, inject, match_targets
from dynlora.decide.allocate import even_ranks
from dynlora.errors import DynloraError
from dynlora.io.export import export_peft
from dynlora.methods import registry
from dynlora.methods.base import MethodSpec, Prepared
from dynlora.training.options import TrainOptions


def adapter_config(model: nn.Module, opts: TrainOptions, spec: MethodSpec) -> AdapterConfig:
    """The injection config for ``opts``: what the method's adapters need, an even split of ``rank_budget``."""
    pattern: dict[str, int] = {}
    if opts.rank_budget is not None:
        names = match_targets(model, opts.targets)
        try:
            pattern = even_ranks(names, opts.rank_budget, spec.min_rank(opts.method_config))
        except ValueError as err:
            raise DynloraError(f"rank_budget {opts.rank_budget}: {err}") from None
    needs = spec.needs(opts.method_config)
    return AdapterConfig(rank=opts.rank, alpha=opts.alpha, dropout=opts.dropout, targets=opts.targets,
                         use_gate=needs.gate, rank_pattern=pattern, input_gate=needs.input_gate,
                         input_gate_bias=needs.input_gate_bias, fade=needs.fade, dtype=opts.adapter_dtype)


def prepare_native(model: nn.Module, opts: TrainOptions, spec: MethodSpec, total_steps: int) -> Prepared:
    """Inject dynlora adapters and wrap the method in a controller."""
    inject(model, adapter_config(model, opts, spec), generator=torch.Generator().manual_seed(opts.seed))
    if getattr(model, "is_quantized", False):
        # transformers refuses to train a quantized model unless it knows trainable adapters are attached;
        # this is the flag its own adapter integration sets
        model._hf_peft_config_loaded = True
    assert spec.build is not None
    method = spec.build(opts.method_config, total_steps)
    controller = Controller(model, method, seed=opts.seed)
    groups = spec.param_groups(model, opts.lr, opts.method_config) if spec.param_groups is not None else None

    def save(folder: Path, gate_means: Any = None) -> Path:
        return export_peft(model, folder, opts.dropout, gate_means=gate_means, dtype=opts.export_dtype)

    return Prepared(model, save, ranks=controller.ranks, flops=lambda: adapter_flops_per_token(model),
                    budget=sum(controller.ranks().values()), controller=controller, param_groups=groups)


def prepare(model: nn.Module, opts: TrainOptions, total_steps: int) -> Prepared:
    """The adapted model for ``opts.method`` (``name`` or ``name:variant``)."""
    spec = registry.get(opts.method)
    if getattr(model, "is_quantized", False):
        from peft import prepare_model_for_kbit_training

        # PEFT's own preparation: non-quantized weights (norms, embeddings, head) to float32, input grads on
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=opts.gradient_checkpointing,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    if opts.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        # as PEFT does: with a frozen embedding a checkpointed block's input would need no grad, and
        # reentrant checkpointing would then drop the adapters' gradients
        model.enable_input_require_grads()
    if spec.prepare is not None:
        return spec.prepare(model, opts.adapter_settings(), opts.method_config, total_steps)
    return prepare_native(model, opts, spec, total_steps)
