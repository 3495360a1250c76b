"""Switch adapters' training on and off: the module-level counterpart of a rank resize."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.core.surgery import unwrap_optimizer


def set_trainable(layers: Mapping[str, LoraLayer], active: Collection[str]) -> None:
    """Adapters in ``active`` train; the others stop: no gradient, no update, optimizer state kept.

    An adapter that does not train still applies its delta. ``requires_grad = False`` means autograd
    computes and stores no gradient for it (and saves fewer activations) and the optimizer skips it.
    Its input gate stops too. An active adapter at rank 0 trains only once it grows a rank again
    (``LoraLayer.trains``).
    """
    chosen = set(active)
    for name, layer in layers.items():
        layer.switch(name in chosen)


class SkipSwitchedOff:
    """Before every step of an optimizer: the gradients of switched-off adapters that hold rank slots are
    dropped, so the optimizer skips them as it skips a frozen parameter (no update, no weight decay, state
    kept). Such an adapter keeps ``requires_grad`` (see ``LoraLayer._follow_trains``) and its gradients are zero,
    so clipping and the gradient norm see what they would see without them."""

    def __init__(self, layers: Mapping[str, LoraLayer]) -> None:
        self.layers = layers
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def install(self, optimizer: object | None) -> None:
        """Hook ``optimizer`` (None: remove the hook)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        if optimizer is not None and any(layer.capacity is not None for layer in self.layers.values()):
            self._handle = unwrap_optimizer(optimizer).register_step_pre_hook(self._before)

    def _before(self, optimizer: object, args: object, kwargs: object) -> None:
        for layer in self.layers.values():
            if layer.capacity is not None and not layer.trains:
                for p in layer.adapter_parameters():
                    p.grad = None


def keep_backward(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Let a training step in which nothing trains (a probe on a model with no trainable head) still run
    its backward: a forward hook replaces the model's floating outputs that need no gradient by copies
    that hang off a fresh leaf. The backward then stops at once, no parameter gets a gradient, and the
    optimizer skips its update; any trainer's loss (the model's own, or one from the logits) works."""

    def anchored(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            return value.detach().requires_grad_().clone()  # a non-leaf: the trainer may scale it in place
        return value

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled()):
            return None
        if isinstance(output, Mapping):  # a ModelOutput: set in place, it keeps its class and attributes
            for key, value in list(output.items()):
                output[key] = anchored(value)
            return output
        if isinstance(output, tuple):
            return tuple(anchored(v) for v in output)
        return anchored(output)

    return model.register_forward_hook(hook)


def can_fold(layer: LoraLayer) -> bool:
    """Whether a switched-off adapter can be folded into its base weight with no change but float32 rounding:
    a plain float32 weight (a bf16 / fp16 one would round the base at every fold), no input gate (it depends on
    x), no dropout (folded, the adapter would see the undropped input)."""
    weight = layer.base.weight
    return (layer.rank > 0 and not layer.quantized and weight.dtype == torch.float32
            and type(weight.data) is torch.Tensor  # a sharded (FSDP) weight holds only part of the rows
            and not layer.has_input_gate and isinstance(layer.dropout, nn.Identity))


def fold(layers: Mapping[str, LoraLayer], names: Collection[str]) -> set[str]:
    """Merge the adapters ``names`` that can be (``can_fold``) into their base weights, so that they cost no
    adapter work forward or backward; returns the names now folded. Their ranks, gates and weights stay."""
    done = set()
    for name in names:
        layer = layers[name]
        if not layer.merged and can_fold(layer):
            layer.merge()
            done.add(name)
    return done


def unfold(layers: Mapping[str, LoraLayer], names: Collection[str]) -> None:
    """Undo ``fold`` for ``names``."""
    for name in names:
        layers[name].unmerge()
