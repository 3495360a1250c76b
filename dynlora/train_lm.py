"""``dynlora train`` for causal LMs: instruction tuning with the loss on the response tokens only.

Same run folder as classification (``train.py``); metrics are eval loss, perplexity and, where the
responses form a closed set (``*-instruct`` tasks), exact match of the greedy answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from transformers import set_seed

from dynlora.checkpoint import save_checkpoint
from dynlora.distributed import is_main_process
from dynlora.export import input_gated
from dynlora.instruct import (
    INSTRUCT_TASKS,
    InstructDataset,
    InstructExample,
    InstructSplit,
    load_instruct,
    pad_batch,
    prompt_ids,
)
from dynlora.models import load_causal_lm
from dynlora.run_folder import abandon, start_run


def is_instruct(task: str | None, dataset: str | None) -> bool:
    """Whether a run is instruction tuning (a ``*-instruct`` task or a prompt/response JSONL file)."""
    if task and (task in INSTRUCT_TASKS or task.endswith("-instruct")):
        return True
    if dataset and dataset.endswith((".jsonl", ".json")):
        try:
            import json

            with open(dataset, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            return "prompt" in json.loads(first) and "response" in json.loads(first)
        except (OSError, ValueError):
            return False
    return False


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


def train_lm(opts: Any, log: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Instruction-tune a causal LM described by ``opts`` (a ``TrainOptions``); returns the metrics."""
    from dynlora.train import (
        build_trainer,
        finish_run,
        fit,
        fit_max_length,
        input_gate_export,
        run_metrics,
        total_optimizer_steps,
    )

    data: InstructDataset = load_instruct(opts.dataset or opts.task, train_size=opts.train_size, seed=opts.seed)
    final, work = start_run(opts.output, asdict(opts), resume)
    try:
        set_seed(opts.seed)
        model, tokenizer = load_causal_lm(opts.model, log)
        max_length = fit_max_length(opts.max_length, model, log)
        train_ds = InstructSplit(data.train, tokenizer, max_length)
        eval_ds = InstructSplit(data.test, tokenizer, max_length)
        total_steps = total_optimizer_steps(opts, len(train_ds))

        def collate(items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
            return pad_batch(items, tokenizer.pad_token_id)

        prepared, trainer, memory = build_trainer(model, opts, work, total_steps, train_ds, collate)
        log(f"dynlora: {opts.method} rank {opts.rank} on {len(prepared.ranks())} modules of a causal LM, "
            f"{len(train_ds)} instruction pairs, {total_steps} steps")
        result, seconds, mem, steps_run = fit(trainer, prepared, work, resume, log)
        eval_loss = float(trainer.evaluate(eval_ds)["eval_loss"])
        metrics = {"task": data.name, "method": opts.method, "seed": opts.seed, "eval_loss": eval_loss,
                   "perplexity": math.exp(min(eval_loss, 50.0)),
                   **run_metrics(prepared, result, seconds, steps_run, memory, mem),
                   "train_examples": len(train_ds), "test_examples": len(eval_ds)}
        if data.answers:
            metrics["exact_match"] = exact_match(prepared.model, tokenizer, data.test, data.answers)
        gate_means = None
        if input_gated(prepared.model):  # fold each gate's mean over validation pairs into B for PEFT
            calibration = InstructSplit(data.validation, tokenizer, max_length)
            gate_means, gate_metrics = input_gate_export(prepared, calibration, collate,
                                                         lambda: {"eval_loss": trainer.evaluate(eval_ds)["eval_loss"]})
            metrics.update(gate_metrics)
        if is_main_process():
            if gate_means is not None:  # the exact model, gate and all
                save_checkpoint(work / "dynlora_state", prepared.model, prepared.controller)
            finish_run(work, final, opts, _Labels(), metrics, prepared, trainer, gate_means)
    except BaseException as err:
        raise abandon(work, err, final) from None
    log(f"dynlora: eval loss {eval_loss:.4f} (perplexity {metrics['perplexity']:.2f}); run written to {final}")
    metrics["output"] = str(final)
    return metrics


class _Labels:
    """What ``write_run_files`` records about labels: a causal LM has none."""

    num_labels = 0
    label_names: tuple[str, ...] = ()
