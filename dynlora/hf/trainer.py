"""The HF Trainer with what dynamic ranks need, and nothing else changed.

- **Data parallel**: the Trainer's training loop holds the ``DistributedDataParallel`` wrapper it
  built at the start. After a resize (new Parameter objects) or a module switch (``requires_grad``
  changed) that wrapper's reducer no longer covers the model's parameters, so ``training_step``
  rebuilds it (``core.distributed.rewrap``) and runs the step through the new one. Inside a gradient
  accumulation window the loop's ``no_sync`` still names the old wrapper, so the new one all-reduces
  every micro-batch until the next optimizer step: correct, a little more communication.
- **Non-finite loss**: a NaN or infinite loss stops the run with an error naming the first step it
  happened (the Trainer's default would quietly drop it from the logged average and train on). The
  check stays on the device until the Trainer reads the loss anyway (a log line, a checkpoint, the
  end), so a GPU step without an event never waits for the host; a poisoned checkpoint is never written.
- **Checkpoints**: only ``trainable_state`` (adapters, trainable head) goes into a checkpoint, not
  the frozen base model; the base is rebuilt from its source on resume. ``CheckpointDone`` writes
  ``checkpoint-N/dynlora-complete`` last (atomically, after every process has written its files):
  a checkpoint without it was cut short by a kill and is never resumed from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback

from dynlora.core.distributed import barrier, parameter_signature, rewrap
from dynlora.decide.schedule import span_steps
from dynlora.errors import DynloraError
from dynlora.hf.callback import FOLLOWS_RANKS
from dynlora.io.checkpoint import COMPLETE_MARKER, WEIGHTS_FILE, load_trainable_state, trainable_state


class NonFiniteLoss(DynloraError):
    """The training loss became NaN or infinite."""


class DynloraTrainerMixin:
    """What ``DynloraTrainer`` adds, for any ``transformers.Trainer`` subclass: ``class MyTrainer(
    DynloraTrainerMixin, SFTTrainer)``. Needed with several processes (DDP must follow rank changes);
    one process trains correctly with ``DynloraCallback()`` alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        setattr(self.model, FOLLOWS_RANKS, True)  # DynloraCallback checks it in multi-process runs

    _signature: Any = None
    _first_bad: torch.Tensor | None = None  # () long: the first optimizer step with a non-finite loss, 0: none
    _bad_loss: torch.Tensor | None = None  # () float: that step's loss
    controller: Any = None  # dynlora's Controller: its ``generation`` changes with every resize or switch

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        loss = super().training_step(self._current_wrapper(model), inputs, num_items_in_batch)
        value = loss.detach().float().mean()
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
        super()._save_checkpoint(model, trial)

    def _controller(self) -> Any:
        """The controller: set on the trainer, or the one a ``DynloraCallback`` among its callbacks built."""
        if self.controller is not None:
            return self.controller
        for callback in self.callback_handler.callbacks:
            found = getattr(callback, "_controller", None)
            if found is not None:
                return found
        return None

    def _current_wrapper(self, model: torch.nn.Module) -> torch.nn.Module:
        """The loop's model, or a rebuilt DDP wrapper when the adapters' parameters changed."""
        if not isinstance(self.model_wrapped, torch.nn.parallel.DistributedDataParallel):
            return model
        controller = self._controller()
        signature = (controller.generation if controller is not None
                     else parameter_signature(self.model))  # PEFT baselines: watch the parameters themselves
        if self._signature is not None and signature != self._signature:
            self.model_wrapped = rewrap(self.model_wrapped)
        self._signature = signature
        return self.model_wrapped

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            folder = Path(output_dir or self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            save_file(trainable_state(self.model), str(folder / WEIGHTS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_trainable_state(self.model, resume_from_checkpoint)


class DynloraTrainer(DynloraTrainerMixin, Trainer):
    """``transformers.Trainer`` that follows rank changes under DDP and stops on a non-finite loss."""


class CheckpointDone(TrainerCallback):
    """Marks a Trainer checkpoint complete once every file of every process is written (goes last)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        barrier()  # other processes write their RNG state into the same folder
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            tmp = folder / f".{COMPLETE_MARKER}.tmp"
            tmp.write_text(f"{state.global_step}\n")
            os.replace(tmp, folder / COMPLETE_MARKER)
        barrier()


def save_interval(every: float, total_steps: int) -> int:
    """Steps between checkpoints: ``every`` steps, or that fraction (< 1) of the run; 0 = never."""
    return span_steps(every, total_steps) if every else 0
