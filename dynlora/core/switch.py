"""Switch adapters' training on and off: the module-level counterpart of a rank resize."""

from __future__ import annotations

from collections.abc import Collection, Mapping

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
