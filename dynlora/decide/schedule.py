"""When to act: the one schedule every method uses; a pure function of the optimizer step.

A schedule fires ``once`` at step ``warmup + n`` or ``every`` n steps after ``warmup``; ``n`` and
``warmup`` are whole numbers of steps, or fractions (< 1) of the run. Nothing fires at or after the
run's last step, where a decision could no longer matter. Steps are optimizer steps (the controller
counts them), never micro-batches.

Text forms: ``once:N``, ``every:N`` and a bare ``N`` (= ``every:N``). Every check and every error
message about "steps or a fraction of the run" lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dynlora.errors import DynloraError

KINDS = ("once", "every")
GRAMMAR = "once:N or every:N, N a whole number of steps or a fraction below 1 of the run"


def _shown(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return repr(value)


def check_span(label: str, value: float, zero: bool = False) -> float:
    """``value`` if it is a whole number of steps (>= 1) or a fraction in (0, 1); 0 too when ``zero``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (zero and value == 0) or 0 < value < 1 or (value >= 1 and float(value).is_integer()))
    if not ok:
        extra = ", or 0" if zero else ""
        raise DynloraError(f"{label} {_shown(value)}: give a whole number of steps or a fraction below 1 of the "
                           f"run{extra}")
    return value


def span_steps(value: float, total_steps: int, minimum: int = 1) -> int:
    """A span in steps: ``value`` itself when whole, else that fraction of ``total_steps`` (at least ``minimum``)."""
    if value >= 1:
        return int(value)
    return max(minimum, int(value * total_steps))


@dataclass(frozen=True)
class Schedule:
    """``once`` / ``every`` with ``n`` and ``warmup`` in steps or fractions; ``for_run`` gives whole steps.

    ``label`` names the option the schedule came from, for error messages.
    """

    kind: str = "every"
    n: float = 1
    warmup: float = 0
    stop: int | None = None  # the run's length once resolved: nothing fires at or after it
    label: str = field(default="schedule", compare=False)
    spec: str = field(default="", compare=False)  # the text it was parsed from

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DynloraError(f"{self.label} {self.kind!r} is not valid; use {GRAMMAR}")
        check_span(self.label, self.n)
        if not isinstance(self.warmup, (int, float)) or self.warmup < 0 or (
                self.warmup >= 1 and not float(self.warmup).is_integer()):
            raise DynloraError(f"{self.label} warm-up {_shown(self.warmup)} must be a whole number of steps >= 0 or "
                               "a fraction below 1 of the run")

    @classmethod
    def parse(cls, text: str | float, warmup: float = 0, label: str = "schedule") -> "Schedule":
        """``once:N``, ``every:N`` or a bare ``N`` (every N)."""
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            check_span(label, text)
            return cls("every", text, warmup, label=label, spec=_shown(text))
        kind, sep, count = str(text).strip().partition(":")
        if not sep:
            kind, count = "every", kind
        if kind not in KINDS:
            raise DynloraError(f"{label} {text!r}: kind {kind!r} is not valid; use {GRAMMAR}")
        try:
            n = float(count)
        except ValueError:
            raise DynloraError(f"{label} {text!r} is not valid; use {GRAMMAR}") from None
        if not (0 < n < 1 or (n >= 1 and n.is_integer())):
            raise DynloraError(f"{label} {text!r}: N must be a whole number of steps or a fraction below 1 of the run")
        return cls(kind, int(n) if n >= 1 else n, warmup, label=label, spec=str(text))

    def describe(self) -> str:
        """The schedule as the user wrote it: ``every:5``, ``once:0.5``, ``50``."""
        return self.spec or f"{self.kind}:{_shown(float(self.n))}"

    def for_run(self, total_steps: int) -> "Schedule":
        """This schedule in whole steps for a run of ``total_steps``; an error if it never fires in it."""
        n = span_steps(self.n, total_steps)
        warmup = span_steps(self.warmup, total_steps, minimum=0) if self.warmup else 0
        first = warmup + n
        if first >= total_steps:
            raise DynloraError(f"{self.label} {self.describe()} (warm-up {warmup}) first fires at step {first}, but "
                               f"a run of {total_steps} steps ends first (it acts before its last step)")
        return replace(self, n=n, warmup=warmup, stop=total_steps)

    def fires(self, step: int, stop: int | None = None) -> bool:
        """Whether to act after optimizer step ``step`` (1-based); needs whole ``n`` and ``warmup``."""
        stop = self.stop if stop is None else stop
        if stop is not None and step >= stop:
            return False
        if self.kind == "once":
            return step == self.warmup + self.n
        return step > self.warmup and (step - self.warmup) % self.n == 0

    def check(self, total_steps: int) -> None:
        """An error if the schedule never fires within a run of ``total_steps``."""
        self.for_run(total_steps)


@dataclass(frozen=True)
class AnyOf:
    """When any of ``schedules`` fires: a method made of two, each acting on its own schedule."""

    schedules: tuple[Schedule, ...]

    def fires(self, step: int, stop: int | None = None) -> bool:
        return any(s.fires(step, stop) for s in self.schedules)
