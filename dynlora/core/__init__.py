"""The adapter layer, injection, optimizer surgery and counting. Imports torch only."""

from dynlora.core.count import adapter_flops_per_token, trainable_parameters
from dynlora.core.inject import AdapterConfig, adapters, inject, match_targets, merge, remove, unmerge
from dynlora.core.layer import LoraLayer, RankChange
from dynlora.core.surgery import remap_optimizer_state, unwrap_optimizer
from dynlora.core.switch import set_trainable

__all__ = [
    "AdapterConfig", "LoraLayer", "RankChange", "adapter_flops_per_token", "adapters", "inject", "match_targets",
    "merge", "remap_optimizer_state", "remove", "set_trainable", "trainable_parameters", "unmerge", "unwrap_optimizer",
]
