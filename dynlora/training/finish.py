"""The finish stage: what every run records, and the run folder's files (written, then renamed into place)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from dynlora import __version__
from dynlora.control.events import Event
from dynlora.core.count import trainable_parameters
from dynlora.errors import DynloraError
from dynlora.io.checkpoint import replace_folder, save_checkpoint
from dynlora.io.disk import write_failure
from dynlora.io.model_card import write_model_card
from dynlora.methods.base import Prepared
from dynlora.report.run_report import write_report
from dynlora.training.fit import Built, Fitted
from dynlora.training.arguments import config_values
from dynlora.training.config import RunConfig
from dynlora.training.records import RunCost
from dynlora.training.run_folder import RUN_MARKER

STATE_FOLDER = "dynlora_state"  # an input-gated run: the exact model state, gate and all


def run_cost(built: Built, fitted: Fitted, train_loss: float) -> RunCost:
    """What every run records besides its task metrics: size, cost, speed and memory. The loss and the
    counted memory (saved activations, gradients and optimizer state) are the whole run's, resumed or not;
    the measured ones (seconds, the sampled peak) are this process's part: after a resume, the resumed steps."""
    prepared, memory, seconds = built.prepared, built.memory, fitted.seconds
    ranks = prepared.ranks()
    return RunCost(trainable_params=trainable_parameters(prepared.model), adapter_flops=prepared.flops(),
                   total_rank=sum(ranks.values()), budget=prepared.budget, modules=len(ranks),
                   train_seconds=round(seconds, 2), step_seconds=round(seconds / max(1, fitted.steps_run), 4),
                   peak_memory_mb=round(fitted.peak.peak_mb, 1), activation_mb=round(memory.peak_bytes / 2**20, 2),
                   activation_steady_mb=round(memory.steady_bytes / 2**20, 2),
                   grads_optimizer_mb=round(memory.state_bytes / 2**20, 3),
                   train_loss=train_loss, steps=int(fitted.result.global_step))


def history(prepared: Prepared, trainer: Any) -> list[Event]:
    """The controller's history, or (no controller) the Trainer's log lines as events."""
    if prepared.controller is not None:
        return list(prepared.controller.history)
    return [Event(step=int(row.get("step", 0)), event="log", detail=row) for row in trainer.state.log_history]


def _write_jsonl(path: Path, events: Sequence[Event]) -> None:
    with path.open("w") as f:
        for event in events:
            f.write(json.dumps(event.row()) + "\n")


def write_run_files(work: Path, config: RunConfig, labels: tuple[int, tuple[str, ...]], metrics: dict[str, Any],
                    prepared: Prepared, trainer: Any) -> None:
    """metrics.json, history.jsonl, ranks.json, gates.json (gated adapters), report/ and run.json."""
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_jsonl(work / "history.jsonl", history(prepared, trainer))
    (work / "ranks.json").write_text(json.dumps(prepared.ranks(), indent=1) + "\n")
    controller = prepared.controller
    if controller is not None and any(layer.gate is not None for layer in controller.layers.values()):
        gates = {n: layer.live_slots(layer.gate.detach()).tolist() for n, layer in controller.layers.items()
                 if layer.gate is not None}
        (work / "gates.json").write_text(json.dumps(gates) + "\n")
    write_report(work, config.adapters.method)
    num_labels, label_names = labels
    run = {"dynlora_version": __version__, "options": config_values(config), "num_labels": num_labels,
           "label_names": list(label_names), "finished": datetime.now().isoformat(timespec="seconds")}
    (work / RUN_MARKER).write_text(json.dumps(run, indent=2) + "\n")


FINISHED = ("metrics.json", "history.jsonl", "ranks.json", "gates.json", "report", "adapter", STATE_FOLDER)


def finish_run(work: Path, final: Path, config: RunConfig, labels: tuple[int, tuple[str, ...]],
               metrics: dict[str, Any], prepared: Prepared, trainer: Any, gate_means: dict[str, float] | None) -> None:
    """Write the run files and the PEFT adapter into ``work``, then drop the checkpoints and rename it to
    ``final``. A failed write (a full disk) removes what it wrote and keeps the checkpoints, so the run
    stays resumable, and raises ``DynloraError`` naming the path and the errno."""
    try:
        if gate_means is not None:  # the exact model, gate and all
            save_checkpoint(work / STATE_FOLDER, prepared.model, prepared.controller)
        write_run_files(work, config, labels, metrics, prepared, trainer)
        prepared.save_adapter(work / "adapter", gate_means=gate_means)
        write_model_card(work)  # adapter/README.md: method, budget, ranks, metrics, how to serve it
    except Exception as err:
        why = write_failure(err, work)
        if why is None:
            raise
        for name in FINISHED:
            path = work / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise DynloraError(f"cannot write the finished run into {work}: {why}") from None
    logs = work / "checkpoints" / "runs"  # the Trainer's TensorBoard default: <output_dir>/runs/<date_host>
    if logs.is_dir():
        logs.rename(work / "runs")  # RUN/runs outlives the checkpoints: tensorboard --logdir RUN/runs
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    replace_folder(work, final)  # replaces an earlier dynlora run of the same name
