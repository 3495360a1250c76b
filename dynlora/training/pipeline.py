"""``dynlora train``: one pipeline for every task kind — load -> prepare -> fit -> finish.

A run folder holds ``run.json`` (the options), ``config.yaml`` (the same as ``dynlora train``'s keys),
``metrics.json``, ``history.jsonl`` and ``adapter/``
(a plain PEFT LoRA adapter). It is written into a hidden temporary folder beside the target and
renamed at the end, so an interrupted or failed run leaves nothing half-written. The task kind
(``Classification`` or ``CausalLM``) supplies the data, the model, the collator and the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed

from dynlora.core.distributed import is_main_process, launched_processes
from dynlora.core.sharded import gather_whole
from dynlora.data.instruct import is_instruct
from dynlora.errors import DynloraError
from dynlora.data.splits import scored_on
from dynlora.io.input_gates import input_gated
from dynlora.io.model_card import serving_lines
from dynlora.training.arguments import config_values, config_yaml
from dynlora.training.causal_lm import CausalLM
from dynlora.training.classification import Classification
from dynlora.training.finish import finish_run, run_cost
from dynlora.training.fit import build_trainer, fit, fit_max_length, total_optimizer_steps
from dynlora.training.input_gate import input_gate_export
from dynlora.training.config import RunConfig
from dynlora.training.run_folder import abandon, start_run
from dynlora.training.run_log import run_log
from dynlora.training.task import TaskKind


def task_kind(config: RunConfig) -> TaskKind:
    """Causal-LM instruction tuning for ``*-instruct`` / ``chatterbot`` / prompt-response JSONL, else classification."""
    return CausalLM() if is_instruct(config.data.task, config.data.dataset) else Classification()


def train(config: RunConfig, log: Callable[[str], None] = print,
          extra_callbacks: Sequence[TrainerCallback] = (), resume: bool = False) -> dict[str, Any]:
    """Run one fine-tune described by ``config``; returns the metrics also written to metrics.json.

    ``resume``: go on with the unfinished run at ``config.trainer.output_dir`` from its last complete checkpoint.
    In a multi-process run every process trains and evaluates; only the main process writes files.
    """
    if config.trainer.fsdp and launched_processes() < 2:  # the Trainer's own check, in one line
        raise DynloraError("fsdp needs several processes: launch with torchrun --nproc_per_node N (or accelerate "
                           "launch) -m dynlora.cli train ...")
    kind = task_kind(config)
    data = scored_on(kind.load_data(config), config.data.eval_split)  # load
    final, work = start_run(config.trainer.output_dir, config_values(config), resume)
    try:
        with run_log(work / "train.log" if is_main_process() else None):  # dependencies' warnings: not the terminal
            metrics = _train_into(work, final, kind, data, config, log, extra_callbacks, resume)
    except BaseException as err:
        raise abandon(work, err, final) from None
    log(f"{kind.summary(metrics)}; run written to {final}")
    if is_main_process():
        for line in serving_lines(final):
            log(f"dynlora: {line}")
    metrics["output"] = str(final)
    return metrics


def _train_into(work: Path, final: Path, kind: TaskKind, data: Any, config: RunConfig, log: Callable[[str], None],
                extra_callbacks: Sequence[TrainerCallback], resume: bool) -> dict[str, Any]:
    """prepare -> fit -> finish in the working folder ``work``, renamed to ``final`` at the end."""
    if is_main_process() and not resume:
        (work / "config.yaml").write_text(config_yaml(config))  # dynlora train RUN/config.yaml trains it again
    set_seed(config.trainer.seed)
    model, tokenizer = kind.load_model(config, data, log)
    max_length = fit_max_length(config.data.max_length, model, log)
    train_ds = kind.split(data, "train", tokenizer, max_length)
    test_ds = kind.split(data, "test", tokenizer, max_length)
    total_steps = total_optimizer_steps(config.trainer, len(train_ds))
    collate = kind.collator(tokenizer)
    built = build_trainer(model, config, work, total_steps, train_ds, collate,  # prepare
                          kind.tokens_across_devices, extra_callbacks)
    prepared, trainer = built.prepared, built.trainer
    if config.trainer.fsdp and not trainer.is_fsdp_enabled:  # accelerate's choice, which it makes silently
        log("dynlora: warning: --fsdp without FSDP: accelerate sets FSDP up only over several GPUs (or other "
            "accelerators); this run trains data parallel")
    log(kind.describe(config, prepared, len(train_ds), total_steps))
    fitted = fit(trainer, work, resume, log)  # fit
    metrics: dict[str, Any] = {"task": data.name, "method": config.adapters.method,  # finish
                               "seed": config.trainer.seed,
                               **kind.evaluate(trainer, prepared, tokenizer, data, test_ds),
                               **run_cost(built, fitted, trainer.run_train_loss()),
                               "train_examples": len(train_ds), "test_examples": len(test_ds),
                               "eval_split": config.data.eval_split}
    gate_means = None
    if input_gated(prepared.model):  # fold each gate's mean over the validation split into B for PEFT
        calibration = kind.split(data, "validation", tokenizer, max_length)
        gate_means, gate_metrics = input_gate_export(prepared, calibration, collate,
                                                     kind.export_score(trainer, data, test_ds))
        metrics.update(gate_metrics)
    gather_whole(trainer.model)  # accelerate's FSDP: every process gathers the shards; the main one writes below
    if is_main_process():
        finish_run(work, final, config, kind.labels(data), metrics, prepared, trainer, gate_means)
    return metrics
