"""What every tracker shares: the protocol the controller drives, and per-module running scores.

A tracker is attached to the adapters, folds what it saw into one score per module once per
optimizer step (``step``), and hands out scores normalised to sum to 1 (``scores``). With ``decay``
set, the score is an exponential moving average, ``s <- decay * s + (1 - decay) * x``; without it the
signal accumulates over the whole run. Trackers know nothing of decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from dynlora.core.layer import LoraLayer


class Tracker(Protocol):
    """Driven by the controller: ``attach`` once, ``step`` after every optimizer step.

    A tracker that keeps per-rank state may also define ``follow(name, keep, grow)``: the controller
    calls it after every rank resize so the state follows the ranks.
    """

    def attach(self, layers: Mapping[str, LoraLayer]) -> None: ...

    def step(self, layers: Mapping[str, LoraLayer]) -> None: ...

    def scores(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def detach(self) -> None: ...


class RunningScores:
    """Per-module running scores with an optional EMA decay.

    Values folded in as tensors stay on their device (float64, so the arithmetic is the same as on
    Python floats): a step without a decision never waits for the device. ``raw`` and ``scores()``
    read them back, once, when a method decides.
    """

    def __init__(self, decay: float | None = None) -> None:
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._raw: dict[str, float | torch.Tensor] = {}

    @property
    def raw(self) -> dict[str, float]:
        """The running value per module, as Python floats (reads device values back)."""
        return {name: float(value) for name, value in self._raw.items()}

    @raw.setter
    def raw(self, values: Mapping[str, float | torch.Tensor]) -> None:
        self._raw = dict(values)

    def fold(self, values: Mapping[str, float | torch.Tensor]) -> None:
        """Add (or, with a decay, average in) one step's value per module; tensors are 0-dim."""
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().double()
            old = self._raw.get(name)
            if self.decay is None:
                self._raw[name] = (old if old is not None else 0.0) + value
            else:
                self._raw[name] = value if old is None else self.decay * old + (1 - self.decay) * value

    def scores(self) -> dict[str, float]:
        raw = self.raw
        total = sum(raw.values())
        if total <= 0:
            return {n: 1.0 / len(raw) for n in raw} if raw else {}
        return {n: v / total for n, v in raw.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"raw": self.raw}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.raw = {k: float(v) for k, v in state["raw"].items()}

    def new_period(self) -> None:
        """A method decided on the scores: a tracker that scores per period between decisions starts a new one."""

    def detach(self) -> None:
        """Remove any hooks (none here)."""
