"""What a set of trained adapters costs in saved activations, against training every adapter (LoRA).

Module allocation saves memory only where autograd no longer needs to save anything, so this measures,
on one MiniLM batch, the bytes saved for backward when only some adapters train: each module kind
alone, each block alone, and every block from a given depth up. It shows what bounds the peak of a
method that trains a subset: the lowest trained adapter makes the base's backward run from there up.

    python bench/saved_activations.py [--output bench/results/saved-activations-minilm] [--rank 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Collection
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dynlora.core.inject import AdapterConfig, adapters, inject
from dynlora.core.switch import set_trainable
from dynlora.data.text import load_task
from dynlora.hf.memory import SavedTensorBytes
from dynlora.hf.models import quiet_loading, resolve_model


def saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor], active: Collection[str]) -> int:
    """Bytes autograd saves in one forward with only ``active`` adapters (and the head) trainable."""
    set_trainable(adapters(model), active)
    counter = SavedTensorBytes(model)
    with counter:
        loss = model(**batch).logits.float().logsumexp(-1).mean()
        used = counter.reset()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="bench/results/saved-activations-minilm")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    folder = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    inject(model, AdapterConfig(rank=args.rank))
    texts = [ex.text for ex in load_task("rt-polarity").train[: args.batch_size]]
    batch = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=args.seq_len,
                           return_tensors="pt"))
    names = list(adapters(model))
    block = {n: int(m.group(1)) for n in names if (m := re.search(r"layer\.(\d+)\.", n))}
    depth = max(block.values()) + 1
    full = saved_bytes(model, batch, names)
    rows: list[tuple[str, int, int]] = [("every adapter (LoRA)", len(names), full),
                                        ("none (only the head trains)", 0, saved_bytes(model, batch, []))]
    kinds: dict[str, list[str]] = {}
    for n in names:
        kinds.setdefault(re.sub(r"^.*layer\.\d+\.", "", n) if n in block else n, []).append(n)
    rows += [(f"only {kind}", len(ns), saved_bytes(model, batch, ns)) for kind, ns in kinds.items()]
    rows += [(f"only block {b}", sum(v == b for v in block.values()),
              saved_bytes(model, batch, [n for n in names if block.get(n) == b])) for b in range(depth)]
    rows += [(f"blocks {b}..{depth - 1}", sum(v >= b for v in block.values()),
              saved_bytes(model, batch, [n for n in names if block.get(n, -1) >= b])) for b in range(1, depth)]
    lines = ["# Saved activations of a trained subset of adapters, MiniLM-L6", "",
             f"- command: `python bench/saved_activations.py --output {args.output} --rank {args.rank}`",
             f"- machine: {platform.platform()}, torch {torch.__version__}; "
             f"{datetime.now().isoformat(timespec='seconds')}",
             f"- one batch {args.batch_size} x {args.seq_len} tokens, rank {args.rank}, all-linear ({len(names)} "
             "adapters); bytes autograd saves for backward in one forward, parameters not counted", "",
             "| trained adapters | count | saved MB | × LoRA |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {count} | {b / 2**20:.1f} | {b / full:.3f} |" for label, count, b in rows]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "saved.json").write_text(json.dumps([{"trained": lb, "count": c, "bytes": b} for lb, c, b in rows],
                                               indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
