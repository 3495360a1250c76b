"""The fit stage: the run length, the HF Trainer around the adapted model, and ``trainer.train()``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from dynlora.core.count import optimizable_parameters
from dynlora.core.distributed import launched_processes, world_size
from dynlora.core.peers import Peer, gather_peers, gone, on_sigterm
from dynlora.errors import DynloraError
from dynlora.hf.callback import DynloraCallback, StepHooks
from dynlora.hf.memory import ActivationMemoryCallback, PeakMemory
from dynlora.hf.trainer import DynloraTrainer
from dynlora.io.checkpoint import checkpoint_step, last_complete_checkpoint
from dynlora.io.disk import write_failure
from dynlora.methods.base import Prepared, TrainData
from dynlora.training.config import RunConfig
from dynlora.training.prepare import prepare


def fit_max_length(max_length: int, model: Any, log: Callable[[str], None]) -> int:
    """``max_length``, capped (with a warning) at the model's position limit, so long texts are truncated."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and 1 < limit < max_length:
        log(f"dynlora: warning: max_length {max_length} is longer than the model's limit of {limit} tokens; "
            f"texts are truncated to {limit}")
        return limit
    return max_length


def total_optimizer_steps(args: TrainingArguments, num_examples: int) -> int:
    """The optimizer steps the Trainer will take (its own formula), known before training starts."""
    if args.max_steps > 0:
        return args.max_steps
    # in N processes accelerate deals the batches out round-robin, so each process (and the run) takes 1/N of them
    processes = launched_processes()
    batches = math.ceil(math.ceil(num_examples / args.per_device_train_batch_size) / processes)
    # accumulation: one optimizer step per gradient_accumulation_steps batches
    return max(1, math.ceil(args.num_train_epochs * batches / args.gradient_accumulation_steps))


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(err).split())


def optimizer_for(args: TrainingArguments, model: Any, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer ``args.optim`` names (with its betas, eps, ...), over dynlora's parameter groups."""
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(groups, **kwargs)


@dataclass(frozen=True)
class Built:
    """A run ready to train: the adapted model, the Trainer around it and the activation-memory recorder."""

    prepared: Prepared
    trainer: DynloraTrainer
    memory: ActivationMemoryCallback


@dataclass(frozen=True)
class Fitted:
    """What one ``trainer.train()`` call gave."""

    result: Any  # the Trainer's TrainOutput
    seconds: float  # wall time of the call
    peak: PeakMemory  # the sampled peak memory of this process
    steps_run: int  # optimizer steps this call took: fewer than the run's after a resume


def build_trainer(model: Any, config: RunConfig, work: Path, total_steps: int, train_ds: Any, collator: Any,
                  tokens_across_devices: bool, extra_callbacks: Sequence[TrainerCallback] = ()) -> Built:
    """The method's adapted model, an HF Trainer around it, and the activation-memory recorder."""
    run = config.trainer
    prepared = prepare(model, config, total_steps, TrainData(train_ds, collator, run.per_device_train_batch_size,
                                                                 run.seed))
    args = run.for_run(work, total_steps, tokens_across_devices)
    memory = ActivationMemoryCallback()
    groups = prepared.param_groups
    controller = prepared.controller
    if groups is None and controller is not None:
        # built here, over every adapter, so that a resume (which may restore switched-off adapters before the
        # Trainer would build its optimizer) gets the same parameter groups as the original run
        groups = [{"params": optimizable_parameters(prepared.model), "lr": args.learning_rate,
                   "weight_decay": args.weight_decay}]
    optimizer = optimizer_for(args, prepared.model, groups) if groups else None
    callbacks: list[TrainerCallback] = []
    if controller is not None:
        controller.optimizer = optimizer  # rank restores on resume must follow this optimizer
        callbacks.append(DynloraCallback(controller))
    if prepared.step_hooks:
        callbacks.append(StepHooks(prepared.step_hooks))
    trainer = DynloraTrainer(model=prepared.model, args=args,
                             train_dataset=train_ds, data_collator=collator, optimizers=(optimizer, None),
                             callbacks=[*callbacks, memory, *extra_callbacks])
    if not tokens_across_devices:
        # a mean loss that ignores num_items_in_batch (a classifier's): the Trainer must divide it by the
        # accumulation steps, or 8 x 2 accumulation would train on twice the gradient of one batch of 16
        trainer.loss_is_scaled_for_ga = False
    return Built(prepared, trainer, memory)


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because a peer went away (gloo's closed connection,
    a timeout, a distributed backend error)."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                  "timed out", "Timed out", "NCCL", "gloo"))


def peer_failure(trainer: DynloraTrainer, peers: Sequence[Peer], how: str) -> str:
    """One line: which process of the run died (when it can be told from here), at which step."""
    dead = gone(peers)
    who = (", ".join(f"process {p.rank} (pid {p.pid})" for p in dead) + f" of {len(peers)} died"
           if dead else f"another of the {len(peers)} processes died or stopped answering")
    return f"{who}; process {torch.distributed.get_rank()} stopped at step {trainer.state.global_step}: {how}"


def stopped(trainer: DynloraTrainer, peers: Sequence[Peer]) -> None:
    """SIGTERM: a launcher stops every process when one fails (torchrun, accelerate), or a user stops the run."""
    if peers:
        raise DynloraError(peer_failure(trainer, peers, "SIGTERM from the launcher"))
    raise DynloraError(f"stopped by SIGTERM at step {trainer.state.global_step}")


def fit(trainer: DynloraTrainer, work: Path, resume: bool, log: Callable[[str], None]) -> Fitted:
    """``trainer.train()``, from the last complete checkpoint when resuming."""
    checkpoint = last_complete_checkpoint(work / "checkpoints", report=log) if resume else None
    if checkpoint is not None:
        log(f"dynlora: resuming from {checkpoint}")  # the Trainer restores the controller (DynloraCallback)
    elif resume:
        log("dynlora: no complete checkpoint yet; starting from the beginning")
    peers = gather_peers() if world_size() > 1 else ()
    start = time.perf_counter()
    with PeakMemory(cuda=trainer.args.device.type == "cuda") as mem, on_sigterm(lambda: stopped(trainer, peers)):
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except DynloraError:
            raise
        except Exception as err:
            why = write_failure(err, trainer.saving) if trainer.saving is not None else None
            if why is not None:  # a full disk: the checkpoint has no marker, so it never counts as complete
                raise DynloraError(f"cannot write checkpoint {trainer.saving}: {why}") from None
            if peers and (gone(peers) or is_collective_failure(err)):
                first = one_line(err).split(". ")[0][:200]  # gloo: "[...pair.cc:537] Read error [ip]:port: ..."
                raise DynloraError(peer_failure(trainer, peers, f"a collective failed ({first})")) from None
            raise
    done_before = (checkpoint_step(checkpoint) or 0) if checkpoint is not None else 0
    return Fitted(result, time.perf_counter() - start, mem, result.global_step - done_before)
