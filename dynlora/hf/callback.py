"""The HF Trainer hooks: a thin wrapper that calls ``Controller.step`` after each optimizer step, and one
that calls plain per-step functions (what a PEFT baseline needs, such as AdaLoRA's allocation)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dynlora.control.controller import Controller
from dynlora.control.events import rank_scalars
from dynlora.control.wrap import CONFIG_ATTR, TRAINABLE_ON_QUANTIZED, attach
from dynlora.core.distributed import world_size
from dynlora.errors import DynloraError
from dynlora.io.checkpoint import CONTROLLER_FILE, controller_state_json, load_controller_json

FOLLOWS_RANKS = "_dynlora_follows_ranks"  # set on the model by a Trainer that rebuilds DDP after rank changes


class DynloraCallback(TrainerCallback):
    """Hands the Trainer's optimizer to the controller and steps it once per optimizer step.

    ``DynloraCallback()`` on a ``get_dynamic_model`` model needs nothing else: when training begins it
    builds the controller for the Trainer's ``max_steps`` around the Trainer's own optimizer, and on
    ``resume_from_checkpoint`` it reads the controller back from ``output_dir/checkpoint-<step>`` (the
    layers already took the checkpoint's ranks when the Trainer loaded its weights).
    ``DynloraCallback(controller)`` drives a controller you built.

    ``on_optimizer_step`` runs after ``optimizer.step()`` and before ``zero_grad()``, so methods can
    still read gradients; it fires once per optimizer step, never per micro-batch. Every Trainer
    checkpoint gets the controller's state (ranks, history, method state); with your own controller,
    ``restore`` reads it back before ``trainer.train(resume_from_checkpoint=...)``.
    """

    def __init__(self, controller: Controller | None = None) -> None:
        self._controller = controller
        self.pending_scalars: dict[str, float] = {}

    @property
    def controller(self) -> Controller:
        if self._controller is None:
            raise DynloraError("DynloraCallback() builds its controller when training begins")
        return self._controller

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if getattr(model, TRAINABLE_ON_QUANTIZED, False) and hasattr(model, CONFIG_ATTR):
            setattr(model, TRAINABLE_ON_QUANTIZED, False)  # the Trainer has checked it (see control.wrap)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if world_size() > 1 and not getattr(model, FOLLOWS_RANKS, False):
            raise DynloraError(f"{world_size()} processes: after a rank change DDP must be rebuilt, which "
                               f"{type(model).__name__}'s Trainer does not do; train with "
                               "class MyTrainer(dynlora.DynloraTrainerMixin, YourTrainer)")
        if self._controller is None:  # a get_dynamic_model model: the run's length comes from the Trainer
            self._controller = attach(model, optimizer, total_steps=state.max_steps)
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.global_step > 0 and (saved / CONTROLLER_FILE).is_file():
                # resumed: the layers took the checkpoint's ranks when its weights were loaded; the rest
                # of the controller (step, history, method and tracker state) comes from here
                self.restore(saved)
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

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:  # every process holds the same state; one writes it
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{CONTROLLER_FILE}.tmp"
        tmp.write_text(json.dumps(controller_state_json(self.controller)))
        os.replace(tmp, folder / CONTROLLER_FILE)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.finish()

    def restore(self, checkpoint: str | os.PathLike) -> None:
        """Load the controller state saved in a Trainer checkpoint (restores every module's rank).

        If you hand the Trainer your own optimizer, give it to the controller too
        (``Controller(..., optimizer=opt)``) so that the restored ranks replace its parameters; an
        optimizer the Trainer builds itself is built after this, from the restored parameters.
        """
        path = Path(checkpoint) / CONTROLLER_FILE
        if not path.is_file():
            raise DynloraError(f"{checkpoint} has no {CONTROLLER_FILE}: not a checkpoint of a dynlora run")
        load_controller_json(self.controller, json.loads(path.read_text()))


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
