"""The HF Trainer with what dynamic ranks need, and nothing else changed.

- **Data parallel**: the Trainer's training loop holds the ``DistributedDataParallel`` wrapper it
  built at the start. After a resize (new Parameter objects) or a module switch (``requires_grad``
  changed) that wrapper's reducer no longer covers the model's parameters, so ``training_step``
  rebuilds it (``core.distributed.rewrap``) and runs the step through the new one. Inside a gradient
  accumulation window the loop's ``no_sync`` still names the old wrapper, so the new one all-reduces
  every micro-batch until the next optimizer step: correct, a little more communication.
- **A base sharded at load time** (``--shard-base``: FSDP2 through transformers' ``DistributedConfig``): the
  frozen base is sharded, the adapters stay whole, replicated in every process (they change shape, which
  FSDP2's sharded parameters cannot), their gradients averaged by the Trainer's hooks, re-hooked after
  every resize or switch; optimizer checkpoints stay whole (see ``__init__``).
- **Non-finite loss**: a NaN or infinite loss stops the run with an error naming the first step it
  happened (the Trainer's default would quietly drop it from the logged average and train on). The
  check stays on the device until the Trainer reads the loss anyway (a log line, a checkpoint, the
  end), so a GPU step without an event never waits for the host; a poisoned checkpoint is never written.
- **Checkpoints**: only ``trainable_state`` (adapters, trainable head) goes into a checkpoint, not
  the frozen base model; the base is rebuilt from its source on resume. ``_save_checkpoint`` is the one
  writer of a checkpoint's dynlora part: after the Trainer's files, each process's record (below), the
  controller's state (``controller.json``) and, last, ``checkpoint-N/dynlora-complete`` (atomically,
  after every process has written its files, with each file's size and SHA-256): a checkpoint without
  it was cut short by a kill or a full disk and is never resumed from, and one whose files no longer
  match it is skipped for the one before. A resume restores the controller (every module's rank)
  before the checkpoint's weights load, through the run's ``DynloraCallback``, the controller's owner.
- **The run's record survives a resume**: the Trainer's ``train_loss`` averages only the losses of
  its own ``train()`` call, so each process keeps the sum of every loss it returned and, at each
  checkpoint, writes it with the state of every callback that has ``checkpoint_state`` (the memory
  record, PEFT AdaLoRA's importance scores) into ``dynlora-record-<process>.json`` (``io.record``);
  a resume reads them back, and ``run_train_loss``
  is the whole run's mean whether it was interrupted or not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Trainer
from transformers.trainer import SCHEDULER_NAME

from dynlora.core.distributed import barrier, mean_across_processes, parameter_signature, rewrap
from dynlora.errors import DynloraError
from dynlora.hf.callback import DYNLORA_TRAINER, dynlora_callback
from dynlora.io.checkpoint import (WEIGHTS_FILE, checkpoint_folder, load_trainable_state, mark_complete,
                                   save_controller_state, trainable_state)
from dynlora.io.record import read_record, write_record


class NonFiniteLoss(DynloraError):
    """The training loss became NaN or infinite."""


class DynloraTrainerMixin:
    """What ``DynloraTrainer`` adds, for any ``transformers.Trainer`` subclass: ``class MyTrainer(
    DynloraTrainerMixin, SFTTrainer)``. Needed with several processes (DDP must follow rank changes);
    one process trains correctly with ``DynloraCallback()`` alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        training_args, model = kwargs.get("args"), kwargs.get("model")
        # The Trainer refuses optimizer checkpoints for a base sharded at load time, whose optimizer state would
        # be sharded too; dynlora's optimizer holds only the adapters, whole in every process, so its state is
        # an ordinary one: the check is passed as for a weights-only checkpoint, then checkpoints are whole again.
        whole = (getattr(model, "is_distributed_loading_by_transformers", False) and training_args is not None
                 and not training_args.save_only_model)
        if whole:
            training_args.save_only_model = True
        # accelerate's FSDP2 takes an optimizer built before the model is sharded (its prepare swaps the parameters
        # for the sharded ones); the Trainer refuses one for FSDP1's sake, so it is handed over after the check
        held = (None, None)
        if _fsdp_asked(training_args) and "optimizers" in kwargs:
            held = kwargs.pop("optimizers")
        try:
            super().__init__(*args, **kwargs)
        finally:
            if whole:
                training_args.save_only_model = False
        if held != (None, None):
            if getattr(self, "is_fsdp_enabled", False) and not self.accelerator.is_fsdp2:
                raise DynloraError("an optimizer built before the Trainer works with accelerate's FSDP2 only "
                                   "(FSDP1 builds its own after wrapping); set fsdp_config version 2")
            self.optimizer, self.lr_scheduler = held
            self.callback_handler.optimizer, self.callback_handler.lr_scheduler = held
        setattr(self.model, DYNLORA_TRAINER, True)  # DynloraCallback checks it (see there)

    _signature: Any = None
    _first_bad: torch.Tensor | None = None  # () long: the first optimizer step with a non-finite loss, 0: none
    _bad_loss: torch.Tensor | None = None  # () float: that step's loss
    _loss_sum: torch.Tensor | None = None  # () float64 on the loss's device: every loss training_step returned
    _loss_before: float = 0.0  # that sum up to the checkpoint a resume started from
    saving: Path | None = None  # the checkpoint folder being written (None once the next step begins)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        self.saving = None
        loss = super().training_step(self._current_wrapper(model), inputs, num_items_in_batch)
        value = loss.detach().float().mean()
        if self._loss_sum is None:  # float64 and in one fixed order: a resumed sum equals a straight one
            self._loss_sum = torch.tensor(self._loss_before, dtype=_sum_dtype(value.device), device=value.device)
        self._loss_sum += value
        if self._first_bad is None or self._bad_loss is None:
            self._first_bad = torch.zeros((), dtype=torch.long, device=value.device)
            self._bad_loss = torch.zeros((), device=value.device)
        first = ~torch.isfinite(value) & (self._first_bad == 0)
        self._first_bad = torch.where(first, self.state.global_step + 1, self._first_bad)
        self._bad_loss = torch.where(first, value, self._bad_loss)
        return loss

    def check_finite(self) -> None:
        """Raise ``NonFiniteLoss`` naming the first step whose loss was NaN or infinite (a host sync)."""
        if self._first_bad is not None and self._bad_loss is not None and int(self._first_bad) > 0:
            raise NonFiniteLoss(f"the training loss is {float(self._bad_loss)} at optimizer step "
                                f"{int(self._first_bad)}; stopped (lower --lr, or check the data)")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.check_finite()
        for callback in self.callback_handler.callbacks:  # rank scalars reach every report_to logger
            pop = getattr(callback, "pop_scalars", None)
            if pop is not None and "loss" in logs:  # training log lines only, not eval or the final summary
                logs = {**logs, **pop()}
        super().log(logs, start_time)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        self.check_finite()
        folder = checkpoint_folder(self.args.output_dir, self.state.global_step)
        self.saving = folder  # until the next step: a failed write names this folder
        super()._save_checkpoint(model, trial)
        write_record(folder, self.args.process_index, {"loss_sum": self.loss_sum(), "callbacks": {
            type(cb).__name__: cb.checkpoint_state() for cb in self.callback_handler.callbacks
            if hasattr(cb, "checkpoint_state")}})
        controller = self._controller()
        if controller is not None and self.state.is_world_process_zero:  # every process holds the same state
            save_controller_state(folder, controller)
        barrier()  # other processes write their RNG state and record into the same folder
        if self.state.is_world_process_zero:  # the marker lists every file's size and SHA-256 (a resume checks them)
            mark_complete(folder, self.state.global_step)
        barrier()

    def loss_sum(self) -> float:
        """The sum of every loss this process's ``training_step`` returned in the whole run (a host sync)."""
        return float(self._loss_sum) if self._loss_sum is not None else self._loss_before

    def run_train_loss(self) -> float:
        """The whole run's training loss as the Trainer defines it (summed losses / optimizer steps),
        averaged over the processes, whether or not the run was resumed."""
        mean = self.loss_sum() / max(self.state.global_step, 1)
        return float(mean_across_processes(torch.tensor([mean], dtype=torch.float64))[0])

    def _restore_record(self, checkpoint: Path) -> None:
        record = read_record(checkpoint, self.args.process_index)
        if record is None:  # a checkpoint from before the record existed: the Trainer's own average
            return
        self._loss_before, self._loss_sum = float(record["loss_sum"]), None
        states = record.get("callbacks", {})
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "load_checkpoint_state") and type(callback).__name__ in states:
                callback.load_checkpoint_state(states[type(callback).__name__])

    def _controller(self) -> Any:
        """The run's controller, held by the ``DynloraCallback`` among the callbacks (None: no controller)."""
        callback = dynlora_callback(self.callback_handler.callbacks)
        return callback.built if callback is not None else None

    def _current_wrapper(self, model: torch.nn.Module) -> torch.nn.Module:
        """The loop's model, or a rebuilt DDP wrapper when the adapters' parameters changed.

        A base sharded at load time (FSDP2) has no DDP wrapper: the Trainer broadcasts the adapters (the
        parameters FSDP2 does not manage) and hooks each one to average its gradient over the processes when
        training starts, so an adapter resized or switched on since gets the same again."""
        ddp = isinstance(self.model_wrapped, torch.nn.parallel.DistributedDataParallel)
        sharded = getattr(self, "is_distributed_loading_by_transformers", False)
        if not ddp and not sharded:
            return model
        controller = self._controller()
        signature = (controller.generation if controller is not None
                     else parameter_signature(self.model))  # PEFT baselines: watch the parameters themselves
        if ddp and not any(p.requires_grad for p in self.model.parameters()):
            # nothing trains (a probe): nothing to synchronise, and a DDP forward would leave its reducer waiting
            # for gradients that never come, to fire on the next step's; the wrapper is rebuilt once one trains
            self._signature = signature
            return self.model_wrapped.module
        if self._signature is not None and signature != self._signature:
            if ddp:
                self.model_wrapped = rewrap(self.model_wrapped)
            else:
                self._sync_replicated_trainable_parameters(self.model)
        self._signature = signature
        return self.model_wrapped if ddp else model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not getattr(self, "is_fsdp_enabled", False):
            super().save_model(output_dir, _internal_call)
            return
        # accelerate's FSDP shards the adapters: every process reads them whole (a collective), whatever the
        # plugin's state dict type; the Trainer's own FSDP files (model and optimizer) follow in its checkpoint
        self._write_trainable(output_dir, trainable_state(self.model))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not getattr(self, "is_fsdp_enabled", False):
            super()._save_optimizer_and_scheduler(output_dir)
            return
        # the Trainer's FSDP checkpoint also writes the whole model, the frozen base gathered onto one process;
        # a resume reads the adapters from dynlora's own file (save_model), so only the optimizer goes through
        # accelerate (its FSDP optimizer format), and the scheduler as the Trainer writes it
        from accelerate.utils import save_fsdp_optimizer

        plugin = self.accelerator.state.fsdp_plugin
        save_fsdp_optimizer(plugin, self.accelerator, self.optimizer, self.model, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self._write_trainable(output_dir, None)

    def _write_trainable(self, output_dir: str | None, state: dict[str, torch.Tensor] | None) -> None:
        if self.args.should_save:
            folder = Path(output_dir or self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            save_file(trainable_state(self.model) if state is None else state, str(folder / WEIGHTS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        callback = dynlora_callback(self.callback_handler.callbacks)
        if callback is not None:  # every module's rank first, so that the saved weights fit
            callback.resume_from(resume_from_checkpoint)
        load_trainable_state(self.model, resume_from_checkpoint)
        self._restore_record(Path(resume_from_checkpoint))


def _fsdp_asked(args: Any) -> bool:
    """Whether the run asks for accelerate's FSDP: ``--fsdp`` or an ``accelerate launch`` FSDP config."""
    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class DynloraTrainer(DynloraTrainerMixin, Trainer):
    """``transformers.Trainer`` that follows rank changes under DDP and stops on a non-finite loss."""
