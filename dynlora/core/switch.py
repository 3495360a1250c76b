"""Switch adapters' training on and off: the module-level counterpart of a rank resize."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from dynlora.core.layer import LoraLayer


def set_trainable(layers: Mapping[str, LoraLayer], active: Collection[str]) -> None:
    """Adapters in ``active`` train; the others stop: no gradient, no update, optimizer state kept.

    An adapter that does not train still applies its delta. ``requires_grad = False`` means autograd
    computes and stores no gradient for it (and saves fewer activations) and the optimizer skips it.
    """
    chosen = set(active)
    for name, layer in layers.items():
        on = name in chosen
        for p in (layer.lora_A, layer.lora_B, layer.gate):
            if p is not None:
                p.requires_grad_(on)
                if not on:
                    p.grad = None


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
