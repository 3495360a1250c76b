"""A run's log file: dependencies' warnings and log records go to ``train.log``, not to the terminal.

While a run trains, Python warnings and the ``transformers`` / ``accelerate`` / ``peft`` loggers write to
``RUN/train.log``. dynlora's own warnings (a truncated text, a capped ``max_length``) are meant for the
user: they reach stdout too, as one line each, once. What the Trainer prints (progress bar, logged
losses) is unchanged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging

DEPENDENCY_LOGGERS = ("transformers", "accelerate", "peft", "trl", "torch", "bitsandbytes", "datasets")
_PACKAGE = Path(__file__).resolve().parents[1]  # dynlora/
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


@contextmanager
def run_log(path: Path | None) -> Iterator[None]:
    """Send warnings and dependencies' log records to ``path`` (none: drop them) for the ``with`` block."""
    to_file = logging.FileHandler(path, encoding="utf-8") if path is not None else logging.NullHandler()
    to_file.setFormatter(logging.Formatter(_FORMAT))
    console = _OwnWarningsToConsole()
    loggers = [logging.getLogger(name) for name in DEPENDENCY_LOGGERS]
    saved = [(lg, lg.propagate) for lg in loggers]
    original_showwarning = warnings.showwarning
    warnings_logger = logging.getLogger("dynlora.warnings")

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: object = None, line: str | None = None) -> None:
        own = Path(filename).resolve().is_relative_to(_PACKAGE)
        text = str(message)
        warnings_logger.warning("%s: %s (%s:%s)", category.__name__, text, filename, lineno,
                                extra={"dynlora_message": text} if own else {})

    hf_logging.disable_default_handler()  # transformers' own stderr handler
    warnings_logger.propagate = False
    warnings_logger.addHandler(to_file)
    warnings_logger.addHandler(console)
    for lg in loggers:
        lg.addHandler(to_file)
        lg.propagate = False
    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = original_showwarning
        for lg, propagate in saved:
            lg.removeHandler(to_file)
            lg.propagate = propagate
        warnings_logger.removeHandler(to_file)
        warnings_logger.removeHandler(console)
        hf_logging.enable_default_handler()
        to_file.close()
