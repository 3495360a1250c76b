"""Plain LoRA on dynlora's adapters: every rank fixed, every adapter training (the static reference)."""

from __future__ import annotations

from dynlora.methods.base import MethodSpec
from dynlora.methods.registry import register

SPEC = register(MethodSpec(
    name="lora",
    help="plain LoRA on dynlora's adapters (fixed ranks)",
    build=lambda config, total_steps: None,
    static=True,
    default=True,
    compare_default=True,
))
