"""The HF Trainer hooks: a thin wrapper that calls ``Controller.step`` after each optimizer step, and one
that calls plain per-step functions (what a PEFT baseline needs, such as AdaLoRA's allocation)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dynlora.control.controller import Controller
from dynlora.control.events import rank_scalars
from dynlora.control.wrap import CONFIG_ATTR, TRAINABLE_ON_QUANTIZED, attach
from dynlora.core.distributed import world_size
from dynlora.core.inject import adapters
from dynlora.errors import DynloraError
from dynlora.hf.arguments import DEEPSPEED_REFUSAL
from dynlora.io.checkpoint import CONTROLLER_FILE, checkpoint_folder, load_controller_state, save_controller_state

DYNLORA_TRAINER = "_dynlora_trainer"  # set on the model by a DynloraTrainerMixin: it rebuilds DDP after rank
# changes and writes the controller's state into its checkpoints itself


class DynloraCallback(TrainerCallback):
    """The owner of a Trainer run's controller: it builds it, restores it on a resume, steps it once per
    optimizer step and hands it the Trainer's optimizer.

    ``DynloraCallback()`` on a ``get_dynamic_model`` model needs nothing else: when training begins it
    builds the controller for the Trainer's ``max_steps`` around the Trainer's own optimizer, and on a
    resume reads the controller back from the checkpoint (the layers already took the checkpoint's ranks
    when the Trainer loaded its weights). ``DynloraCallback(controller)`` drives a controller you built.

    ``on_optimizer_step`` runs after ``optimizer.step()`` and before ``zero_grad()``, so methods can
    still read gradients; it fires once per optimizer step, never per micro-batch. Every Trainer
    checkpoint gets the controller's state (ranks, history, method state). Under ``DynloraTrainerMixin``
    a resume is whole by itself; under a plain Trainer with your own controller, ``restore`` reads the
    state back before ``trainer.train(resume_from_checkpoint=...)``, and without one the callback reads
    ``output_dir/checkpoint-<step>`` (what ``resume_from_checkpoint=True`` resumes from).
    """

    def __init__(self, controller: Controller | None = None) -> None:
        self._controller = controller
        self._resume: Path | None = None  # a checkpoint to restore once the controller is built
        self.pending_scalars: dict[str, float] = {}

    @property
    def controller(self) -> Controller:
        if self._controller is None:
            raise DynloraError("DynloraCallback() builds its controller when training begins")
        return self._controller

    @property
    def built(self) -> Controller | None:
        """The controller, or None before ``DynloraCallback()`` has built it."""
        return self._controller

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if getattr(model, TRAINABLE_ON_QUANTIZED, False) and hasattr(model, CONFIG_ATTR):
            setattr(model, TRAINABLE_ON_QUANTIZED, False)  # the Trainer has checked it (see control.wrap)

    def resume_from(self, checkpoint: str | os.PathLike) -> None:
        """Restore the controller from ``checkpoint`` now, or once it is built (``DynloraTrainerMixin`` calls
        this before it loads the checkpoint's weights: every module takes its saved rank first)."""
        if self._controller is None:
            self._resume = Path(checkpoint)
        else:
            self.restore(checkpoint)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            raise DynloraError(DEEPSPEED_REFUSAL.format(what="a DeepSpeed run"))
        if world_size() > 1 and not getattr(model, DYNLORA_TRAINER, False) and not _holds_still(model):
            raise DynloraError(f"{world_size()} processes: after a rank change DDP must be rebuilt, which a "
                               "Trainer without dynlora's mixin does not do; train with "
                               "class MyTrainer(dynlora.DynloraTrainerMixin, YourTrainer), or give the adapters "
                               "rank slots (capacity=...)")
        if self._controller is None:  # a get_dynamic_model model: the run's length comes from the Trainer
            self._controller = attach(model, optimizer, total_steps=state.max_steps)
            guess = checkpoint_folder(args.output_dir, state.global_step)
            if self._resume is not None:
                # resumed: the layers took the checkpoint's ranks when its weights were loaded; the rest of
                # the controller (step, history, method and tracker state) comes from here
                self.restore(self._resume)
            elif state.global_step > 0 and (guess / CONTROLLER_FILE).is_file():  # a plain Trainer's resume
                self.restore(guess)
        self.controller.optimizer = optimizer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None:
            self.controller.optimizer = optimizer
        history = self.controller.history
        seen = len(history)
        self.controller.step()
        if len(history) > seen and history[-1].ranks is not None:
            # a rank event: its scalars go into the Trainer's next log line (DynloraTrainerMixin.log), now;
            # the one before it is near the end (init is always there), so no step scans the whole history
            before = next(e for e in reversed(history[:-1]) if e.ranks is not None)
            self.pending_scalars = rank_scalars(before, history[-1], self.controller.active)
            control.should_log = True

    def pop_scalars(self) -> dict[str, float]:
        """The rank scalars of the last event, once (for the Trainer's log line)."""
        scalars, self.pending_scalars = self.pending_scalars, {}
        return scalars

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        self.controller.note("log", **{k: v for k, v in (logs or {}).items() if not k.startswith("dynlora/")})

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # under DynloraTrainerMixin the Trainer writes the checkpoint's dynlora part itself, with its marker
        if getattr(model, DYNLORA_TRAINER, False) or not state.is_world_process_zero:
            return
        save_controller_state(checkpoint_folder(args.output_dir, state.global_step), self.controller)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.finish()

    def restore(self, checkpoint: str | os.PathLike) -> None:
        """Load the controller state saved in a Trainer checkpoint (restores every module's rank).

        If you hand the Trainer your own optimizer, give it to the controller too
        (``Controller(..., optimizer=opt)``) so that the restored ranks replace its parameters; an
        optimizer the Trainer builds itself is built after this, from the restored parameters.
        """
        load_controller_state(Path(checkpoint), self.controller)
        self._resume = None


def dynlora_callback(callbacks: Sequence[TrainerCallback]) -> DynloraCallback | None:
    """The ``DynloraCallback`` among a Trainer's callbacks (None: the run has no dynlora controller)."""
    return next((cb for cb in callbacks if isinstance(cb, DynloraCallback)), None)


class StepHooks(TrainerCallback):
    """Calls each ``hook(global_step)`` after every optimizer step."""

    def __init__(self, hooks: Sequence[Callable[[int], None]]) -> None:
        self.hooks = list(hooks)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            hook(state.global_step)

    def checkpoint_state(self) -> dict[str, Any]:
        """The state of each hook that keeps one (``checkpoint_state``), for a resume."""
        return {str(i): hook.checkpoint_state() for i, hook in enumerate(self.hooks)
                if hasattr(hook, "checkpoint_state")}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        for i, hook in enumerate(self.hooks):
            if str(i) in state and hasattr(hook, "load_checkpoint_state"):
                hook.load_checkpoint_state(state[str(i)])


def _holds_still(model: Any) -> bool:
    """Whether no event changes the model's parameters or what asks for gradients: every adapter holds a fixed
    capacity of rank slots (a resize rewrites them in place, a switch stops gradients by a mask), so a DDP
    wrapper built once stays right."""
    layers = adapters(model)
    return (getattr(model, CONFIG_ATTR, None) is not None and bool(layers)
            and all(layer.capacity is not None for layer in layers.values()))
