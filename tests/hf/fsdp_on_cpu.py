"""accelerate's FSDP state on a machine without an accelerator, for tests.

accelerate sets its FSDP state up only over several accelerators (``AcceleratorState.__init__`` switches
MULTI_GPU, MULTI_NPU, ... to FSDP when ``ACCELERATE_USE_FSDP`` is set, never MULTI_CPU), so TRL's ``fsdp2.yaml``
with ``use_cpu: true`` runs as plain DDP. ``on_cpu(Trainer)`` makes the one switch accelerate would make over
GPUs, with the plugin accelerate would build (from ``--fsdp`` or the launch config's environment): everything after it is
accelerate's and the Trainer's own FSDP2 path (``fsdp2_prepare_model``, the optimizer swap, the FSDP state
dict, ``save_fsdp_model`` / ``save_fsdp_optimizer`` and their loads), over gloo."""

from __future__ import annotations

from typing import Any


def on_cpu(trainer_class: type) -> type:
    """``trainer_class`` whose accelerator is in accelerate's FSDP state (the launch config's plugin)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class FsdpOnCpu(trainer_class):  # type: ignore[misc, valid-type]
        def create_accelerator_and_postprocess(self, *args: Any, **kwargs: Any) -> None:
            super().create_accelerator_and_postprocess(*args, **kwargs)
            state = self.accelerator.state
            assert state.distributed_type == DistributedType.MULTI_CPU, state.distributed_type
            # both: a later AcceleratorState() reads the type back from PartialState's (as accelerate writes it)
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            # the plugin the Trainer built from --fsdp / --fsdp_config, or one from the launch config's FSDP_* variables
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args or {}))
            self.is_fsdp_enabled = True

        def _prepare_for_training(self, *args: Any, **kwargs: Any) -> Any:
            prepared = super()._prepare_for_training(*args, **kwargs)
            adapter = next(p for n, p in self.model.named_parameters() if "lora_A" in n)
            print(f"fsdp_on_cpu: {type(self.model).__name__} holds {type(adapter).__name__} adapters", flush=True)
            return prepared

    return FsdpOnCpu
