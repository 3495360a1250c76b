"""``dynlora train``: fine-tune with adapters through the HF Trainer and write a run folder.

A run folder holds ``run.json`` (the options), ``metrics.json``, ``history.jsonl`` and ``adapter/``
(a plain PEFT LoRA adapter). It is written into a hidden temporary folder beside the target and
renamed at the end, so an interrupted or failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

from dynlora import __version__
from dynlora.adaptive import AdaptiveConfig
from dynlora.callback import DynloraCallback
from dynlora.checkpoint import replace_folder, save_checkpoint
from dynlora.data import load_task, tokenize
from dynlora.distributed import is_main_process
from dynlora.errors import DynloraError
from dynlora.export import calibrate_input_gates, constant_input_gates, input_gated
from dynlora.inject import trainable_parameters
from dynlora.l1ra import L1RAConfig
from dynlora.memory import ActivationMemoryCallback, PeakMemory
from dynlora.metrics import accuracy, macro_f1
from dynlora.models import load_classifier
from dynlora.module_alloc import ModuleAllocConfig
from dynlora.recipes import check_method, prepare
from dynlora.report import write_report
from dynlora.run_folder import RUN_MARKER, abandon, start_run
from dynlora.trainer import CheckpointDone, DynloraTrainer, last_complete_checkpoint, save_interval


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``dynlora train`` takes; checked on construction."""

    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | tuple[str, ...] = "all-linear"
    epochs: float = 1.0
    max_steps: int = -1
    train_size: int | None = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.06
    max_length: int = 64
    seed: int = 0
    output: str | None = None
    rank_budget: int | None = None  # total rank over all adapters; default rank x number of adapters
    save_every: float = 0.1  # checkpoint every N steps, or that fraction (< 1) of the run; 0 = never
    l1ra: L1RAConfig = field(default_factory=L1RAConfig)
    module_alloc: ModuleAllocConfig = field(default_factory=ModuleAllocConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)

    def __post_init__(self) -> None:
        check_method(self)
        checks = {"rank": self.rank > 0, "batch_size": self.batch_size > 0, "lr": self.lr > 0,
                  "epochs": self.epochs > 0, "max_length": self.max_length > 1,
                  "max_steps": self.max_steps == -1 or self.max_steps > 0,
                  "train_size": self.train_size is None or self.train_size > 0,
                  "rank_budget": self.rank_budget is None or self.rank_budget > 0,
                  "warmup_ratio": 0 <= self.warmup_ratio < 1,
                  "save_every": 0 <= self.save_every < 1 or self.save_every == int(self.save_every)}
        for name, ok in checks.items():
            if not ok:
                raise DynloraError(f"{name} {getattr(self, name)!r} is out of range")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def training_args(opts: TrainOptions, out: Path, total_steps: int) -> TrainingArguments:
    from dynlora.train_lm import is_instruct

    every = save_interval(opts.save_every, total_steps)
    return TrainingArguments(
        # the Trainer scales each process's loss by the number of processes, which is right only for a loss
        # that divides by the global token count (causal LMs); a classifier's mean loss would count double
        average_tokens_across_devices=is_instruct(opts.task, opts.dataset),
        output_dir=str(out / "checkpoints"), save_strategy="steps" if every else "no", save_steps=every or 500,
        save_total_limit=2, per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=max(opts.batch_size, 64), learning_rate=opts.lr,
        num_train_epochs=opts.epochs, max_steps=total_steps,  # exactly the steps the methods' schedules assume
        warmup_steps=opts.warmup_ratio,
        seed=opts.seed, data_seed=opts.seed, logging_steps=max(1, min(50, total_steps // 20)),
        eval_strategy="no", report_to="none", disable_tqdm=False,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )


def total_optimizer_steps(opts: TrainOptions, num_examples: int) -> int:
    """The optimizer steps the Trainer will take (its own formula), known before training starts."""
    if opts.max_steps > 0:
        return opts.max_steps
    # in N processes accelerate deals the batches out round-robin, so each process (and the run) takes 1/N of them
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(math.ceil(num_examples / opts.batch_size) / processes)
    return max(1, math.ceil(opts.epochs * batches))


def build_trainer(model: Any, opts: TrainOptions, tmp: Path, total_steps: int, train_ds: Any, collator: Any,
                  extra_callbacks: Sequence[TrainerCallback] = ()
                  ) -> tuple[Any, DynloraTrainer, ActivationMemoryCallback]:
    """The method's adapted model, an HF Trainer around it, and the activation-memory recorder."""
    prepared = prepare(model, opts, total_steps)
    memory = ActivationMemoryCallback()
    groups = prepared.param_groups
    if groups is None and prepared.controller is not None:
        # built here, over every adapter, so that a resume (which may restore switched-off adapters before the
        # Trainer would build its optimizer) gets the same parameter groups as the original run
        groups = [{"params": [p for p in prepared.model.parameters() if p.requires_grad], "lr": opts.lr,
                   "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups) if groups else None
    if prepared.controller is not None:
        prepared.controller.optimizer = optimizer  # rank restores on resume must follow this optimizer
    trainer = DynloraTrainer(model=prepared.model, args=training_args(opts, tmp, total_steps), train_dataset=train_ds,
                             data_collator=collator, optimizers=(optimizer, None),
                             callbacks=[*prepared.callbacks, memory, *extra_callbacks, CheckpointDone()])
    return prepared, trainer, memory


def fit(trainer: Trainer, prepared: Any, work: Path, resume: bool,
        log: Callable[[str], None]) -> tuple[Any, float, PeakMemory, int]:
    """``trainer.train()``, from the last complete checkpoint when resuming.

    Returns (result, seconds, memory, steps taken by this call: fewer than the run's after a resume).
    """
    checkpoint = last_complete_checkpoint(work / "checkpoints") if resume else None
    if checkpoint is not None:
        log(f"dynlora: resuming from {checkpoint}")
        for callback in prepared.callbacks:
            if isinstance(callback, DynloraCallback):
                callback.restore(checkpoint)  # every module's rank before the Trainer loads weights
    elif resume:
        log("dynlora: no complete checkpoint yet; starting from the beginning")
    start = time.perf_counter()
    with PeakMemory() as mem:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    done_before = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    return result, time.perf_counter() - start, mem, result.global_step - done_before


def evaluate(trainer: Trainer, dataset: Any, examples: Sequence[Any], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the trainer's model on a tokenized split."""
    labels = np.asarray([ex.label for ex in examples])
    guesses = np.asarray(trainer.predict(dataset).predictions).argmax(-1)
    return {"accuracy": accuracy(guesses, labels), "f1": macro_f1(guesses, labels, num_labels)}


def input_gate_export(prepared: Any, calibration: Any, collate: Callable[[list[Any]], dict[str, torch.Tensor]],
                      score: Callable[[], dict[str, float]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Gate means over a calibration split, and what folding them into B costs.

    ``score()`` evaluates the model on the test split; it runs with the gates held at their means, and its
    results are returned as ``export_<name>`` (the logits error is measured on the calibration batches).
    """
    device = next(prepared.model.parameters()).device
    batches = []
    for start in range(0, min(len(calibration), 256), 64):
        batch = collate([calibration[i] for i in range(start, min(start + 64, len(calibration), 256))])
        batches.append({k: v.to(device) for k, v in batch.items() if k != "labels"})
    means = calibrate_input_gates(prepared.model, batches)
    prepared.model.eval()
    with torch.no_grad():
        exact = [prepared.model(**b).logits for b in batches]
        with constant_input_gates(prepared.model, means):
            folded = [prepared.model(**b).logits for b in batches]
            approx = score()
    error = max(float((e - f).abs().max()) for e, f in zip(exact, folded))
    gate_flops = sum(layer.input_gate_flops() for layer in prepared.controller.layers.values())
    forward_flops = 2 * sum(p.numel() for p in prepared.model.parameters())  # per token, dense estimate
    return means, {"input_gate_mean": round(sum(means.values()) / len(means), 4),
                   "export_logits_max_error": round(error, 6), **{f"export_{k}": v for k, v in approx.items()},
                   "input_gate_flops": gate_flops, "input_gate_flops_share": round(gate_flops / forward_flops, 6)}


def train(opts: TrainOptions, log: Callable[[str], None] = print,
          extra_callbacks: Sequence[TrainerCallback] = (), resume: bool = False) -> dict[str, Any]:
    """Run one fine-tune described by ``opts``; returns the metrics also written to metrics.json.

    ``resume``: go on with the unfinished run at ``opts.output`` from its last complete checkpoint.
    In a multi-process run every process trains and evaluates; only the main process writes files.
    """
    from dynlora.train_lm import is_instruct, train_lm

    if is_instruct(opts.task, opts.dataset):
        return train_lm(opts, log, resume)
    data = load_task(opts.task, opts.dataset, text_column=opts.text_column, label_column=opts.label_column,
                     train_size=opts.train_size, seed=opts.seed)
    final, work = start_run(opts.output, asdict(opts), resume)
    try:
        set_seed(opts.seed)
        model, tokenizer = load_classifier(opts.model, data.num_labels)
        max_length = fit_max_length(opts.max_length, model, log)
        train_ds = tokenize(data.train, tokenizer, max_length)
        test_ds = tokenize(data.test, tokenizer, max_length)
        total_steps = total_optimizer_steps(opts, len(train_ds))
        prepared, trainer, memory = build_trainer(model, opts, work, total_steps, train_ds,
                                                  DataCollatorWithPadding(tokenizer), extra_callbacks)
        log(f"dynlora: {opts.method} rank {opts.rank} on {len(prepared.ranks())} modules, "
            f"{trainable_parameters(prepared.model):,} trainable parameters, {len(train_ds)} training examples, "
            f"{total_steps} steps")
        result, seconds, mem, steps_run = fit(trainer, prepared, work, resume, log)
        metrics = {"task": data.name, "method": opts.method, "seed": opts.seed,
                   **evaluate(trainer, test_ds, data.test, data.num_labels),
                   **run_metrics(prepared, result, seconds, steps_run, memory, mem),
                   "train_examples": len(train_ds), "test_examples": len(test_ds)}
        gate_means = None
        if input_gated(prepared.model):
            calibration = tokenize(data.validation, tokenizer, max_length)
            gate_means, gate_metrics = input_gate_export(
                prepared, calibration, DataCollatorWithPadding(tokenizer),
                lambda: {"accuracy": evaluate(trainer, test_ds, data.test, data.num_labels)["accuracy"]})
            metrics.update(gate_metrics)
        if is_main_process():
            if gate_means is not None:  # the exact model, gate and all
                save_checkpoint(work / "dynlora_state", prepared.model, prepared.controller)
            finish_run(work, final, opts, data, metrics, prepared, trainer, gate_means)
    except BaseException as err:
        raise abandon(work, err, final) from None
    log(f"dynlora: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1']:.4f}  "
        f"({metrics['train_seconds']:.0f} s); run written to {final}")
    metrics["output"] = str(final)
    return metrics


def finish_run(work: Path, final: Path, opts: TrainOptions, data: Any, metrics: dict[str, Any], prepared: Any,
               trainer: Trainer, gate_means: dict[str, float] | None) -> None:
    """Write the run files and the PEFT adapter into ``work``, then rename it to ``final``."""
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    write_run_files(work, opts, data, metrics, prepared, trainer)
    prepared.save_adapter(work / "adapter", gate_means=gate_means)
    replace_folder(work, final)  # replaces an earlier dynlora run of the same name


def fit_max_length(max_length: int, model: Any, log: Callable[[str], None]) -> int:
    """``max_length``, capped (with a warning) at the model's position limit, so long texts are truncated."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and 1 < limit < max_length:
        log(f"dynlora: warning: max_length {max_length} is longer than the model's limit of {limit} tokens; "
            f"texts are truncated to {limit}")
        return limit
    return max_length


def run_metrics(prepared: Any, result: Any, seconds: float, steps_run: int, memory: ActivationMemoryCallback,
                mem: PeakMemory) -> dict[str, Any]:
    """What every run records besides its task metrics: size, cost, speed and memory (speed and memory of
    this process's part of the run: after a resume, of the resumed steps)."""
    ranks = prepared.ranks()
    return {"trainable_params": trainable_parameters(prepared.model), "adapter_flops": prepared.adapter_flops(),
            "total_rank": sum(ranks.values()), "budget": prepared.budget, "modules": len(ranks),
            "train_seconds": round(seconds, 2), "step_seconds": round(seconds / max(1, steps_run), 4),
            "peak_memory_mb": round(mem.peak_mb, 1), "activation_mb": round(memory.peak_bytes / 2**20, 2),
            "activation_steady_mb": round(memory.steady_bytes / 2**20, 2),
            "grads_optimizer_mb": round(memory.state_bytes / 2**20, 3),
            "train_loss": float(result.training_loss), "steps": int(result.global_step)}


def write_run_files(tmp: Path, opts: TrainOptions, data: Any, metrics: dict[str, Any], prepared: Any,
                    trainer: Trainer) -> None:
    """metrics.json, history.jsonl, ranks.json, gates.json (gated methods), report/ and run.json."""
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    controller = prepared.controller
    history = controller.history if controller is not None else [
        {"event": "log", **row} for row in trainer.state.log_history]
    _write_jsonl(tmp / "history.jsonl", history)
    (tmp / "ranks.json").write_text(json.dumps(prepared.ranks(), indent=1) + "\n")
    if controller is not None and any(layer.gate is not None for layer in controller.layers.values()):
        gates = {n: layer.gate.detach().tolist() for n, layer in controller.layers.items() if layer.gate is not None}
        (tmp / "gates.json").write_text(json.dumps(gates) + "\n")
    write_report(tmp)
    run = {"dynlora_version": __version__, "options": asdict(opts), "num_labels": data.num_labels,
           "label_names": list(data.label_names), "finished": datetime.now().isoformat(timespec="seconds")}
    (tmp / RUN_MARKER).write_text(json.dumps(run, indent=2) + "\n")
