"""What a method decided: plain data that the controller applies and records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resize:
    """What to do to one adapter's ranks: keep these indices (in order), then add ``grow`` new ones."""

    keep: tuple[int, ...]
    grow: int = 0


@dataclass(frozen=True)
class Plan:
    """One decision: rank resizes, adapters re-factorised, a new set of training adapters, ranks that start to fade.

    The controller applies them in that order (fade indices count after the resizes and in the
    re-factorised order), fixes the optimizer, and records an event named ``event`` with ``detail`` (the
    method's own typed record). ``refactor``: adapters rewritten as their singular directions, strongest
    first (``core.refactor``): the output stays, their ranks' optimizer state starts afresh.
    """

    event: str
    resizes: Mapping[str, Resize] = field(default_factory=dict)
    refactor: tuple[str, ...] = ()  # adapters re-factorised after the resizes
    active: tuple[str, ...] | None = None  # adapters that train from now on; None: unchanged
    fold_inactive: bool = False  # with ``active``: fold the others into their base weights where exact
    fade: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # ranks that fade out over fade_steps
    fade_steps: int = 1
    detail: Any = None  # a dataclass of the method's (what it saw and why), written into the history

    def __post_init__(self) -> None:
        if self.fade_steps < 1:
            raise ValueError(f"fade_steps must be >= 1, got {self.fade_steps}")
