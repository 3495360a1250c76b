"""Instruction data for causal language models: prompt/response pairs, loss on the response only.

A pair becomes ``chat_template(user: prompt, generation prompt) + response + eos``; the labels are
-100 on every prompt token (and on padding), so the loss counts exactly the response tokens. The
built-in classification tasks can be phrased as instructions (``trec6-instruct``,
``rt-polarity-instruct``): the response is the label's name, scored by exact match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynlora.data import TextExample, load_task
from dynlora.errors import DynloraError

IGNORE = -100
PROMPTS = {
    "rt-polarity": ("Is this movie review positive or negative? Answer with one word.\n\n{text}",
                    ("negative", "positive")),
    "trec6": ("What kind of answer does this question ask for? Answer with one of: abbreviation, description, "
              "entity, human, location, number.\n\n{text}",
              ("abbreviation", "description", "entity", "human", "location", "number")),
}


@dataclass(frozen=True)
class InstructExample:
    prompt: str
    response: str


@dataclass(frozen=True)
class InstructDataset:
    name: str
    train: tuple[InstructExample, ...]
    validation: tuple[InstructExample, ...]
    test: tuple[InstructExample, ...]
    answers: tuple[str, ...] = ()  # the closed set of responses, for exact-match scoring


def phrase(examples: Sequence[TextExample], task: str) -> tuple[InstructExample, ...]:
    """A classification split as instructions: the answer is the label's name."""
    template, names = PROMPTS[task]
    return tuple(InstructExample(template.format(text=ex.text), names[ex.label]) for ex in examples)


def load_instruct(name: str, train_size: int | None = None, seed: int = 0) -> InstructDataset:
    """``rt-polarity-instruct``, ``trec6-instruct``, or a local JSONL file with prompt/response fields."""
    base = name.removesuffix("-instruct")
    if name.endswith("-instruct") and base in PROMPTS:
        data = load_task(base, train_size=train_size, seed=seed)
        return InstructDataset(name, phrase(data.train, base), phrase(data.validation, base),
                               phrase(data.test, base), PROMPTS[base][1])
    path = Path(name)
    if path.suffix in (".jsonl", ".json") and path.is_file():
        return _from_jsonl(path)
    valid = ", ".join(f"{t}-instruct" for t in PROMPTS)
    raise DynloraError(f"unknown instruction task {name!r}; valid: {valid}, or a local .jsonl with prompt/response")


def _from_jsonl(path: Path) -> InstructDataset:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DynloraError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise DynloraError(f"{path}: line {number} needs string fields 'prompt' and 'response'")
        pairs.append(InstructExample(row["prompt"], row["response"]))
    if len(pairs) < 3:
        raise DynloraError(f"{path}: {len(pairs)} prompt/response pairs; at least 3 are needed")
    n_test = max(1, len(pairs) // 10)
    return InstructDataset(path.stem, tuple(pairs[: -2 * n_test]), tuple(pairs[-2 * n_test: -n_test]),
                           tuple(pairs[-n_test:]))


def encode(example: InstructExample, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels for one pair; labels are -100 on the prompt."""
    if getattr(tokenizer, "chat_template", None):
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": example.prompt}],
                                                   add_generation_prompt=True, tokenize=True)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
            prompt_ids = prompt_ids["input_ids"]
    else:
        prompt_ids = tokenizer(example.prompt + "\n", add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    keep_prompt = max(0, max_length - len(response_ids))  # cut the prompt's start, never the answer
    prompt_ids = list(prompt_ids)[-keep_prompt:] if keep_prompt else []
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


class InstructSplit(torch.utils.data.Dataset):
    """Encoded pairs for the HF Trainer (pad with ``pad_batch``)."""

    def __init__(self, examples: Sequence[InstructExample], tokenizer: Any, max_length: int = 256) -> None:
        self.items = [encode(ex, tokenizer, max_length) for ex in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def pad_batch(items: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: pad tokens get attention 0 and label -100."""
    width = max(len(item["input_ids"]) for item in items)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([item[key] + [fill] * (width - len(item[key])) for item in items])

    return {"input_ids": padded("input_ids", pad_id), "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", IGNORE)}
