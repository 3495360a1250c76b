"""Causal-LM instruction tuning as a task kind: the loss on the response tokens only.

Metrics are eval loss, perplexity and, where the responses form a closed set (``*-instruct`` tasks),
exact match of the greedy answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dynlora.data.instruct import InstructDataset, InstructExample, InstructSplit, load_instruct, pad_batch, prompt_ids
from dynlora.hf.models import load_causal_lm
from dynlora.methods.base import Prepared
from dynlora.training.config import RunConfig


@torch.no_grad()
def exact_match(model: Any, tokenizer: Any, examples: Sequence[InstructExample], answers: Sequence[str],
                limit: int = 200) -> float:
    """Share of greedy answers (a few new tokens) that equal the reference response."""
    model.eval()
    hits = 0
    chosen = list(examples)[:limit]
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) + 1
    for ex in chosen:
        ids = torch.tensor([prompt_ids(tokenizer, ex.prompt)], device=next(model.parameters()).device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=longest,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().lower()
        hits += int(text.split()[0].strip(".,!") == ex.response.lower() if text else False)
    return hits / max(1, len(chosen))


class CausalLM:
    """``--task chatterbot`` / ``*-instruct`` or a prompt/response JSONL, on a causal LM."""

    name = "causal-lm"
    tokens_across_devices = True

    def load_data(self, config: RunConfig) -> InstructDataset:
        data = config.data
        return load_instruct(data.dataset or data.task, train_size=data.train_size, seed=config.trainer.seed)

    def load_model(self, config: RunConfig, data: InstructDataset, log: Callable[[str], None]) -> tuple[Any, Any]:
        base = config.model
        return load_causal_lm(base.model, log, base.dtype, base.quantize, config.trainer.train_on, base.shard_base)

    def split(self, data: InstructDataset, which: str, tokenizer: Any, max_length: int) -> Any:
        return InstructSplit(getattr(data, which), tokenizer, max_length)

    def collator(self, tokenizer: Any) -> Callable[[list[Any]], dict[str, Any]]:
        def collate(items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
            return pad_batch(items, tokenizer.pad_token_id)
        return collate

    def describe(self, config: RunConfig, prepared: Prepared, examples: int, total_steps: int) -> str:
        return (f"dynlora: {config.adapters.method} rank {config.adapters.rank} on {len(prepared.ranks())} modules "
                f"of a causal LM, "
                f"{examples} instruction pairs, {total_steps} steps")

    def evaluate(self, trainer: Any, prepared: Prepared, tokenizer: Any, data: InstructDataset,
                 test_ds: Any) -> dict[str, float]:
        eval_loss = float(trainer.evaluate(test_ds)["eval_loss"])
        metrics = {"eval_loss": eval_loss, "perplexity": math.exp(min(eval_loss, 50.0))}
        if data.answers:
            metrics["exact_match"] = exact_match(prepared.model, tokenizer, data.test, data.answers)
        return metrics

    def export_score(self, trainer: Any, data: InstructDataset, test_ds: Any) -> Callable[[], dict[str, float]]:
        return lambda: {"eval_loss": trainer.evaluate(test_ds)["eval_loss"]}

    def labels(self, data: InstructDataset) -> tuple[int, tuple[str, ...]]:
        return 0, ()

    def summary(self, metrics: dict[str, Any]) -> str:
        return f"dynlora: eval loss {metrics['eval_loss']:.4f} (perplexity {metrics['perplexity']:.2f})"
