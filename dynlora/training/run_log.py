"""Where dependencies' output goes: a run's ``train.log`` (or another command's log), never the terminal.

While a command runs, Python warnings and the records of every dependency logger (``transformers``,
``peft``, ``bitsandbytes``, ``kernels``, ... and anything that reaches the root logger) are kept away from
the terminal. ``hold_output`` (the ``dynlora`` command wraps every command in it) keeps them in memory
from the first import on, since some dependencies log as they are imported; ``run_log(path)`` writes what
was held and everything after it to ``path`` (a run's ``train.log``). Held records that no ``run_log``
ever takes (``--help``, a bad flag, a command without a log file) are dropped.

dynlora's own warnings (a truncated text, a capped ``max_length``) are meant for the user: they reach
stdout, one line each, once. What the Trainer prints (progress bar, logged losses) is unchanged.
This module imports nothing heavy: the command line uses it before it parses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# loggers that come with a terminal handler of their own (transformers' and datasets' default handlers)
# or that a dependency sets to not propagate; the root logger takes all the others
DEPENDENCY_LOGGERS = ("transformers", "accelerate", "peft", "trl", "torch", "bitsandbytes", "datasets", "kernels",
                      "huggingface_hub")
_PACKAGE = Path(__file__).resolve().parents[1]  # dynlora/
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_WARNINGS = "dynlora.warnings"


class _OwnWarningsToConsole(logging.Handler):
    """dynlora's own warnings on stdout as ``dynlora: warning: <message>``, each message once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = getattr(record, "dynlora_message", None)
        if message is not None and message not in self.seen:
            self.seen.add(message)
            print(f"dynlora: warning: {message}")  # with dynlora's other messages: stderr is for the error


class _Hold(logging.Handler):
    """Keeps records until a log file takes them (at most ``limit``: a command that never opens one
    cannot grow without bound)."""

    def __init__(self, limit: int = 10_000) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.limit:
            self.records.append(record)


_held: list[_Hold] = []  # the innermost hold_output's handler last


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    own = Path(filename).resolve().is_relative_to(_PACKAGE)
    text = str(message)
    logging.getLogger(_WARNINGS).warning("%s: %s (%s:%s)", category.__name__, text, filename, lineno,
                                         extra={"dynlora_message": text} if own else {})


@contextmanager
def _routed(handler: logging.Handler) -> Iterator[None]:
    """Dependencies' records and warnings to ``handler`` (dynlora's own warnings to the console too) for the
    ``with`` block; every logger, the root logger and ``warnings.showwarning`` are as they were afterwards."""
    console = _OwnWarningsToConsole()
    root = logging.getLogger()
    warnings_logger = logging.getLogger(_WARNINGS)
    loggers = [logging.getLogger(name) for name in DEPENDENCY_LOGGERS]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in [*loggers, warnings_logger]]
    original_showwarning = warnings.showwarning
    for lg in loggers:
        lg.handlers = [handler]  # replaces transformers' own stderr handler while the block runs
        lg.propagate = False
    warnings_logger.handlers = [handler, console]
    warnings_logger.propagate = False
    root.addHandler(handler)  # anything else, which would otherwise reach logging's last-resort stderr handler
    warnings.showwarning = _showwarning
    try:
        yield
    finally:
        warnings.showwarning = original_showwarning
        root.removeHandler(handler)
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate


@contextmanager
def hold_output() -> Iterator[None]:
    """Keep dependencies' records and warnings in memory for the ``with`` block, for a ``run_log`` to write."""
    hold = _Hold()
    _held.append(hold)
    try:
        with _routed(hold):
            yield
    finally:
        _held.remove(hold)


@contextmanager
def run_log(path: Path | None) -> Iterator[None]:
    """Send warnings and dependencies' log records to ``path`` (appended; none: drop them) for the ``with``
    block, after what ``hold_output`` kept until now."""
    to_file = logging.FileHandler(path, encoding="utf-8") if path is not None else logging.NullHandler()
    to_file.setFormatter(logging.Formatter(_FORMAT))
    for hold in _held:
        for record in hold.records:
            to_file.handle(record)
        hold.records.clear()
    try:
        with _routed(to_file):
            yield
    finally:
        to_file.close()
