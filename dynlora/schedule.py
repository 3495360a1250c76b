"""When to act: once at step N, or every N steps, after an optional warm-up; a pure function of the step.

Steps are optimizer steps (the controller counts them), never micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynlora.errors import DynloraError


@dataclass(frozen=True)
class Schedule:
    """``once`` fires at step ``n`` only; ``every`` fires at ``warmup + n, warmup + 2n, ...``.

    ``warmup``: steps before the first firing of ``every`` beyond its own ``n`` (all modules stay
    active until the first firing). Nothing fires at or after ``stop`` (the run's last step, where
    a decision could no longer matter).
    """

    kind: str = "every"
    n: int = 1
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("once", "every"):
            raise DynloraError(f"schedule kind {self.kind!r} is not valid; use once:N or every:N")
        if self.n <= 0:
            raise DynloraError(f"schedule interval must be a positive number of steps, got {self.n}")
        if self.warmup < 0:
            raise DynloraError(f"schedule warm-up must be >= 0, got {self.warmup}")

    @classmethod
    def parse(cls, text: str, warmup: int = 0) -> "Schedule":
        """``once:N`` or ``every:N``."""
        kind, _, count = text.partition(":")
        try:
            n = int(count)
        except ValueError:
            raise DynloraError(f"schedule {text!r} is not valid; use once:N or every:N with N a whole number") from None
        return cls(kind=kind, n=n, warmup=warmup)

    def fires(self, step: int, stop: int | None = None) -> bool:
        """Whether to act after optimizer step ``step`` (1-based)."""
        if stop is not None and step >= stop:
            return False
        if self.kind == "once":
            return step == self.warmup + self.n
        return step > self.warmup and (step - self.warmup) % self.n == 0

    def check(self, total_steps: int) -> None:
        """An error if the schedule never fires within a run of ``total_steps``."""
        first = self.warmup + self.n
        if first >= total_steps:
            raise DynloraError(f"schedule {self.kind}:{self.n} (warm-up {self.warmup}) first fires at step {first}, "
                               f"but the run has {total_steps} steps")
