"""The fit stage: the run length, the HF Trainer around the adapted model, and ``trainer.train()``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from dynlora.core.count import optimizable_parameters
from dynlora.core.distributed import world_size
from dynlora.core.peers import Peer, gather_peers, gone, on_sigterm
from dynlora.errors import DynloraError
from dynlora.hf.callback import DynloraCallback, StepHooks
from dynlora.hf.device import resolve_device
from dynlora.hf.memory import ActivationMemoryCallback, PeakMemory
from dynlora.hf.trainer import DynloraTrainer, save_interval
from dynlora.io.checkpoint import checkpoint_step, last_complete_checkpoint
from dynlora.io.disk import write_failure
from dynlora.methods.base import Prepared, TrainData
from dynlora.training.options import TRAINER_DEFAULTS, TrainOptions
from dynlora.training.prepare import prepare


def fit_max_length(max_length: int, model: Any, log: Callable[[str], None]) -> int:
    """``max_length``, capped (with a warning) at the model's position limit, so long texts are truncated."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and 1 < limit < max_length:
        log(f"dynlora: warning: max_length {max_length} is longer than the model's limit of {limit} tokens; "
            f"texts are truncated to {limit}")
        return limit
    return max_length


def total_optimizer_steps(opts: TrainOptions, num_examples: int) -> int:
    """The optimizer steps the Trainer will take (its own formula), known before training starts."""
    if opts.max_steps > 0:
        return opts.max_steps
    # in N processes accelerate deals the batches out round-robin, so each process (and the run) takes 1/N of them
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(math.ceil(num_examples / opts.batch_size) / processes)
    return max(1, math.ceil(opts.epochs * batches / opts.grad_accum))  # accumulation: one step per grad_accum batches


def logging_interval(total_steps: int, save_every: int = 0) -> int:
    """Log about 20 times a run, at least every 50 steps, and at every checkpoint (a divisor of the
    ``save_every`` steps): the Trainer's loss since the last log dies with a killed process, so a
    resumed run's log lines equal a straight run's only when a checkpoint never falls inside a window."""
    steps = max(1, min(50, total_steps // 20))
    return math.gcd(steps, save_every) if save_every else steps


def training_args(opts: TrainOptions, out: Path, total_steps: int, tokens_across_devices: bool) -> TrainingArguments:
    """The Trainer's arguments for a run of exactly ``total_steps`` optimizer steps; ``opts.trainer`` last."""
    every = save_interval(opts.save_every, total_steps)
    kwargs: dict[str, Any] = dict(
        # the Trainer scales each process's loss by the number of processes, which is right only for a loss
        # that divides by the global token count (causal LMs); a classifier's mean loss would count double
        average_tokens_across_devices=tokens_across_devices,
        output_dir=str(out / "checkpoints"), save_strategy="steps" if every else "no", save_steps=every or 500,
        per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=max(opts.batch_size, 64),
        learning_rate=opts.lr, weight_decay=opts.weight_decay,
        num_train_epochs=opts.epochs, max_steps=total_steps,  # exactly the steps the methods' schedules assume
        warmup_steps=opts.warmup, seed=opts.seed, data_seed=opts.seed,
        logging_steps=logging_interval(total_steps, every),
        use_cpu=resolve_device(opts.device) == "cpu", bf16=opts.bf16, fp16=opts.fp16,
        gradient_accumulation_steps=opts.grad_accum, **TRAINER_DEFAULTS)
    if opts.gradient_checkpointing:
        kwargs.update(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    kwargs.update(opts.trainer)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as err:  # transformers' own check of a trainer field
        raise DynloraError(f"training arguments: {one_line(err)}") from None


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


def build_trainer(model: Any, opts: TrainOptions, work: Path, total_steps: int, train_ds: Any, collator: Any,
                  tokens_across_devices: bool, extra_callbacks: Sequence[TrainerCallback] = ()) -> Built:
    """The method's adapted model, an HF Trainer around it, and the activation-memory recorder."""
    prepared = prepare(model, opts, total_steps, TrainData(train_ds, collator, opts.batch_size, opts.seed))
    args = training_args(opts, work, total_steps, tokens_across_devices)
    memory = ActivationMemoryCallback()
    groups = prepared.param_groups
    controller = prepared.controller
    if groups is None and controller is not None:
        # built here, over every adapter, so that a resume (which may restore switched-off adapters before the
        # Trainer would build its optimizer) gets the same parameter groups as the original run
        groups = [{"params": optimizable_parameters(prepared.model), "lr": opts.lr,
                   "weight_decay": opts.weight_decay}]
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
