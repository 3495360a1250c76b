"""Sequence classification as a task kind: labelled texts, a fresh head, accuracy and macro-F1."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from transformers import DataCollatorWithPadding

from dynlora.core.count import trainable_parameters
from dynlora.data.text import TextDataset, load_task, tokenize
from dynlora.hf.models import load_classifier
from dynlora.methods.base import Prepared
from dynlora.training.metrics import accuracy, macro_f1
from dynlora.training.config import RunConfig


def evaluate(trainer: Any, dataset: Any, examples: Sequence[Any], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the trainer's model on a tokenized split."""
    labels = np.asarray([ex.label for ex in examples])
    guesses = np.asarray(trainer.predict(dataset).predictions).argmax(-1)
    return {"accuracy": accuracy(guesses, labels), "f1": macro_f1(guesses, labels, num_labels)}


class Classification:
    """``--task rt-polarity`` / ``trec6`` or a labelled CSV / JSONL."""

    name = "classification"
    tokens_across_devices = False

    def load_data(self, config: RunConfig) -> TextDataset:
        data = config.data
        return load_task(data.task, data.dataset, text_column=data.text_column, label_column=data.label_column,
                         train_size=data.train_size, seed=config.trainer.seed)

    def load_model(self, config: RunConfig, data: TextDataset, log: Callable[[str], None]) -> tuple[Any, Any]:
        base = config.model
        return load_classifier(base.model, data.num_labels, base.dtype, base.quantize, config.trainer.train_on,
                               base.shard_base)

    def split(self, data: TextDataset, which: str, tokenizer: Any, max_length: int) -> Any:
        return tokenize(getattr(data, which), tokenizer, max_length)

    def collator(self, tokenizer: Any) -> Callable[[list[Any]], dict[str, Any]]:
        return DataCollatorWithPadding(tokenizer)

    def describe(self, config: RunConfig, prepared: Prepared, examples: int, total_steps: int) -> str:
        return (f"dynlora: {config.adapters.method} rank {config.adapters.rank} on {len(prepared.ranks())} modules, "
                f"{trainable_parameters(prepared.model):,} trainable parameters, {examples} training examples, "
                f"{total_steps} steps")

    def evaluate(self, trainer: Any, prepared: Prepared, tokenizer: Any, data: TextDataset,
                 test_ds: Any) -> dict[str, float]:
        return evaluate(trainer, test_ds, data.test, data.num_labels)

    def export_score(self, trainer: Any, data: TextDataset, test_ds: Any) -> Callable[[], dict[str, float]]:
        return lambda: {"accuracy": evaluate(trainer, test_ds, data.test, data.num_labels)["accuracy"]}

    def labels(self, data: TextDataset) -> tuple[int, tuple[str, ...]]:
        return data.num_labels, tuple(data.label_names)

    def summary(self, metrics: dict[str, Any]) -> str:
        return (f"dynlora: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1']:.4f}  "
                f"({metrics['train_seconds']:.0f} s)")
