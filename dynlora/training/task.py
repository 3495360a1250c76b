"""A task kind: what the one training pipeline asks of sequence classification or causal-LM tuning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dynlora.methods.base import Prepared
from dynlora.training.config import RunConfig


class TaskKind(Protocol):
    """Supplies the pipeline's task-specific parts: data, model, splits, collator and metrics."""

    name: str
    tokens_across_devices: bool  # the loss divides by the global token count (the Trainer's N-process scaling)

    def load_data(self, config: RunConfig) -> Any:
        """The data set (before any run folder exists, so bad data leaves nothing behind)."""

    def load_model(self, config: RunConfig, data: Any, log: Callable[[str], None]) -> tuple[Any, Any]:
        """(model, tokenizer)."""

    def split(self, data: Any, which: str, tokenizer: Any, max_length: int) -> Any:
        """``train`` / ``validation`` / ``test`` as a torch dataset."""

    def collator(self, tokenizer: Any) -> Callable[[list[Any]], dict[str, Any]]: ...

    def describe(self, config: RunConfig, prepared: Prepared, examples: int, total_steps: int) -> str:
        """The log line before training."""

    def evaluate(self, trainer: Any, prepared: Prepared, tokenizer: Any, data: Any, test_ds: Any) -> dict[str, float]:
        """The task's metrics on the test split."""

    def export_score(self, trainer: Any, data: Any, test_ds: Any) -> Callable[[], dict[str, float]]:
        """The headline metric on the test split (run again with the input gate folded)."""

    def labels(self, data: Any) -> tuple[int, tuple[str, ...]]:
        """(number of labels, label names) for ``run.json``; (0, ()) for a causal LM."""

    def summary(self, metrics: dict[str, Any]) -> str:
        """The log line after training."""
