"""Which base modules an adapter can wrap, and their in / out features, without importing transformers.

transformers' ``Conv1D`` (GPT-2) is a linear layer that stores its weight as (in, out). It is
recognised by class only when transformers is already loaded: a model that holds one has imported
it, so ``dynlora.core`` never needs to import transformers itself.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def _conv1d_class() -> type | None:
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D``, whose weight is (in, out)."""
    cls = _conv1d_class()
    return cls is not None and isinstance(module, cls)


def is_linear(module: nn.Module) -> bool:
    """True for a module an adapter can wrap: ``nn.Linear`` or transformers' ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a base computes in: its weight's when floating, else its ``compute_dtype`` (quantized
    layers such as bitsandbytes' ``Linear4bit`` keep integer storage), else float32."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype
    dtype = getattr(module, "compute_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear base; a TypeError for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"cannot adapt {type(module).__name__}: only nn.Linear and transformers Conv1D")
