"""Parameters that need their own learning rate inside an optimizer that someone else grouped.

A method may want some parameters at their own base learning rate (per-rank gates, say). When
dynlora builds the optimizer it gives them their own param group. When the optimizer comes from
elsewhere (the HF Trainer's or TRL's ``create_optimizer``, or a user's), the param groups cannot change:
the checkpointed optimizer and scheduler state, and the scheduler's list of groups, must stay the
Trainer's. ``OwnLearningRates`` keeps the groups and rescales the step instead. Around each
``optimizer.step()`` it moves each such parameter ``p`` to ``old + k * (p - old)``, where
``k = want / base lr of p's group``. For an optimizer whose update is linear in the learning rate
(SGD with or without momentum, Adam, AdamW, RMSprop, Adagrad), that is exactly the step of a group at
``want``. The optimizer state is unchanged, and the group's scheduler still drives the step. A group
that holds only such parameters (one built for them) is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from dynlora.core.surgery import unwrap_optimizer


def base_lr(group: Mapping[str, object]) -> float:
    """A group's unscheduled learning rate: ``initial_lr`` once an LR scheduler owns it, else ``lr``."""
    return float(group.get("initial_lr", group["lr"]))  # type: ignore[arg-type]


class OwnLearningRates:
    """Rescale the optimizer step of ``wants`` (parameter -> wanted base lr); ``close`` removes the hooks."""

    def __init__(self, optimizer: object, wants: Mapping[nn.Parameter, float]) -> None:
        self.optimizer = unwrap_optimizer(optimizer)
        self.wants = {id(p): (p, lr) for p, lr in wants.items()}
        self._old: list[tuple[nn.Parameter, torch.Tensor, float]] = []
        self._handles = [self.optimizer.register_step_pre_hook(self._before),
                         self.optimizer.register_step_post_hook(self._after)]

    def factors(self) -> dict[int, float]:
        """id(parameter) -> k for every wanted parameter that shares its group with others and whose group's base
        lr is not its own (python floats). A group of wanted parameters alone is theirs: its lr is left as set."""
        out: dict[int, float] = {}
        for group in self.optimizer.param_groups:
            if all(id(p) in self.wants for p in group["params"]):
                continue
            lr = base_lr(group)
            for p in group["params"]:
                if id(p) in self.wants:
                    want = self.wants[id(p)][1]
                    if lr > 0 and abs(want / lr - 1.0) > 1e-12:
                        out[id(p)] = want / lr
        return out

    @torch.no_grad()
    def _before(self, optimizer: object, args: object, kwargs: object) -> None:
        self._old = [(self.wants[i][0], self.wants[i][0].detach().clone(), k) for i, k in self.factors().items()]

    @torch.no_grad()
    def _after(self, optimizer: object, args: object, kwargs: object) -> None:
        for p, old, k in self._old:
            p.copy_(torch.lerp(old, p.detach(), k))  # old + k * (p - old), on the device
        self._old = []

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
