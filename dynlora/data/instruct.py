"""Instruction data for causal language models: prompt/response pairs, loss on the response only.

A pair becomes ``chat_template(user: prompt, generation prompt) + response + eos``; the labels are
-100 on every prompt token (and on padding), so the loss counts exactly the response tokens. The
built-in classification tasks can be phrased as instructions (``trec6-instruct``,
``rt-polarity-instruct``): the response is the label's name, scored by exact match. ``chatterbot``
is open question answering: the consecutive turns of the ``chatterbot-corpus`` package's English
conversations (2,393 pairs), split 80/10/10 by the SHA-1 of the prompt, so a question with several
answers never sits in two splits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynlora.data.text import TextExample, load_task, subsample
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


INSTRUCT_TASKS = ("chatterbot", *(f"{t}-instruct" for t in PROMPTS))


def load_instruct(name: str, train_size: int | None = None, seed: int = 0) -> InstructDataset:
    """``chatterbot``, ``rt-polarity-instruct``, ``trec6-instruct``, or a local prompt/response JSONL file."""
    if name == "chatterbot":
        data = load_chatterbot()
        if train_size is not None:  # the same seeded subset rule as the classification tasks
            keyed = {TextExample(f"{ex.prompt}\n{ex.response}", 0): ex for ex in data.train}
            kept = subsample(list(keyed), train_size, seed)
            data = InstructDataset(data.name, tuple(keyed[k] for k in kept), data.validation, data.test)
        return data
    base = name.removesuffix("-instruct")
    if name.endswith("-instruct") and base in PROMPTS:
        data = load_task(base, train_size=train_size, seed=seed)
        return InstructDataset(name, phrase(data.train, base), phrase(data.validation, base),
                               phrase(data.test, base), PROMPTS[base][1])
    path = Path(name)
    if path.suffix in (".jsonl", ".json") and path.is_file():
        return _from_jsonl(path)
    valid = ", ".join(INSTRUCT_TASKS)
    raise DynloraError(f"unknown instruction task {name!r}; valid: {valid}, or a local .jsonl with prompt/response")


def load_chatterbot() -> InstructDataset:
    """Every consecutive (statement, reply) turn of chatterbot-corpus's English conversations."""
    import yaml  # a dependency of transformers

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise DynloraError("task 'chatterbot' needs the chatterbot-corpus package: "
                           "pip install --no-deps chatterbot-corpus")
    folder = Path(spec.origin).parent / "data" / "english"
    pairs: dict[tuple[str, str], None] = {}  # ordered set: exact duplicate pairs count once
    for path in sorted(folder.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            texts = [str(t).strip() for t in turns]
            pairs.update({(a, b): None for a, b in zip(texts, texts[1:]) if a and b})
    splits: list[list[InstructExample]] = [[], [], []]
    for digest, prompt, response in sorted((hashlib.sha1(p.encode()).hexdigest(), p, r) for p, r in pairs):
        bucket = int(digest, 16) % 10
        splits[0 if bucket < 8 else bucket - 7].append(InstructExample(prompt, response))
    return InstructDataset("chatterbot", *(tuple(s) for s in splits))


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


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The tokens a response follows: the chat template's user turn and generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def encode(example: InstructExample, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels for one pair; labels are -100 on the prompt."""
    prompt = prompt_ids(tokenizer, example.prompt)
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    keep_prompt = max(0, max_length - len(response_ids))  # cut the prompt's start, never the answer
    prompt = prompt[-keep_prompt:] if keep_prompt else []
    ids = (prompt + response_ids)[:max_length]
    labels = ([IGNORE] * len(prompt) + response_ids)[:max_length]
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


def is_instruct(task: str | None, dataset: str | None) -> bool:
    """Whether a run is instruction tuning (a ``*-instruct`` task, ``chatterbot``, or a prompt/response JSONL)."""
    if task and (task in INSTRUCT_TASKS or task.endswith("-instruct")):
        return True
    if dataset and dataset.endswith((".jsonl", ".json")):
        try:
            with open(dataset, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            return "prompt" in json.loads(first) and "response" in json.loads(first)
        except (OSError, ValueError):
            return False
    return False
