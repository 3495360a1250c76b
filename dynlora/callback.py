"""The HF Trainer hook: a thin wrapper that calls ``Controller.step`` after each optimizer step."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from dynlora.controller import Controller


class DynloraCallback(TrainerCallback):
    """Hands the Trainer's optimizer to the controller and steps it once per optimizer step.

    ``on_optimizer_step`` runs after ``optimizer.step()`` and before ``zero_grad()``, so methods can
    still read gradients; it fires once per optimizer step, never per micro-batch.
    """

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.controller.optimizer = optimizer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None:
            self.controller.optimizer = optimizer
        self.controller.step()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        self.controller.note("log", **(logs or {}))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.record("end")
