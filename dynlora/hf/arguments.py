"""``DynloraTrainingArguments``: transformers' ``TrainingArguments`` as a dynlora run takes them.

It is the ``trainer`` part of a run's configuration, the way TRL's ``SFTConfig`` is: every Trainer
flag under its usual name, with dynlora's defaults where they differ, the flags of dynlora 0.3
(``--lr``, ``--epochs``, ``--batch-size``, ...) as aliases, and three fields of dynlora's own (where to
train, how often to checkpoint, the exported adapter's dtype). A field of ``LEFT_TO_THE_RUN`` left at
None depends on the run's length or task; ``for_run`` decides it when the run starts and gives the
Trainer its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy
from transformers.training_args import OptimizerNames

from dynlora.decide.schedule import check_span, span_steps
from dynlora.errors import DynloraError
from dynlora.hf.device import DEVICES, check_device, resolve_device
from dynlora.io.adapter_file import EXPORT_DTYPES, check_export_dtype

# what transformers' own checks see while such a field is None (its own defaults): None is put back afterwards
LEFT_TO_THE_RUN: dict[str, Any] = {"output_dir": "trainer_output", "logging_steps": 500, "save_strategy": "steps",
                                   "save_steps": 500, "per_device_eval_batch_size": 8,
                                   "average_tokens_across_devices": True}
# set by dynlora: a run resumes with --resume; a launcher's local rank comes from the environment
MANAGED_FIELDS = {"resume_from_checkpoint": "--resume RUN"}
# ZeRO holds gradients (stage 2) and weights (stage 3) in its own partitions, where dynlora's scores and resizes
# do not reach them (docs/engines.md): refused, not trained with silently empty scores
DEEPSPEED_REFUSAL = ("{what}: DeepSpeed ZeRO keeps the adapters' gradients and weights in its own partitions, "
                     "which dynlora does not read or resize yet; use DDP, or FSDP2 with rank slots "
                     "(--fsdp full_shard --capacity N)")


def _hf(name: str, default: Any, *aliases: str, help: str | None = None) -> Any:
    """``TrainingArguments.<name>`` with dynlora's default (and old flag names as aliases)."""
    meta = dict(TrainingArguments.__dataclass_fields__[name].metadata)
    if help is not None:
        meta["help"] = help
    if aliases:
        meta["aliases"] = list(aliases)
    return field(default=default, metadata=meta)


def _own(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class DynloraTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with dynlora's defaults: AdamW without the fused kernel (what every method's optimizer
    was, so runs stay comparable), no reporting unless asked, the last two checkpoints, a progress bar even when
    not on a terminal, no per-step isnan() sync, and a collective that waits 2 minutes, not 30, before it gives up
    on a process that hangs (a dead one's connection closes at once under gloo; NCCL only learns it from this
    timeout). A field left at None is decided by dynlora for the run (see its help)."""

    _argument_group_name = "transformers.TrainingArguments (every Trainer flag; here with dynlora's defaults)"
    output_dir: str | None = _hf("output_dir", None, "--output",
                                 help="the run folder (default runs/<timestamp>); checkpoints go to its checkpoints/")
    per_device_train_batch_size: int = _hf("per_device_train_batch_size", 16, "--batch-size", "--batch_size")
    num_train_epochs: float = _hf("num_train_epochs", 1.0, "--epochs")
    learning_rate: float = _hf("learning_rate", 1e-3, "--lr")
    warmup_steps: float = _hf("warmup_steps", 0.06, "--warmup-ratio", "--warmup_ratio")
    weight_decay: float = _hf("weight_decay", 0.0)
    gradient_accumulation_steps: int = _hf("gradient_accumulation_steps", 1, "--grad-accum", "--grad_accum")
    seed: int = _hf("seed", 0)
    optim: OptimizerNames | str = _hf("optim", "adamw_torch")
    report_to: None | str | list[str] = _hf("report_to", "none")
    eval_strategy: str = _hf("eval_strategy", "no")
    save_total_limit: int | None = _hf("save_total_limit", 2)
    disable_tqdm: bool | None = _hf("disable_tqdm", False)
    logging_nan_inf_filter: bool = _hf("logging_nan_inf_filter", False)
    dataloader_num_workers: int = _hf("dataloader_num_workers", 0)
    ddp_timeout: int = _hf("ddp_timeout", 120)
    logging_steps: float | None = _hf("logging_steps", None,
                                      help="log every N steps, or that fraction (< 1) of the run (default: about 20 "
                                           "times a run, at least every 50 steps)")
    save_strategy: SaveStrategy | str | None = _hf("save_strategy", None,
                                                   help="no / steps / epoch / best (default: steps, or no with "
                                                        "--save-every 0)")
    save_steps: float | None = _hf("save_steps", None, help="checkpoint every N steps (default: from --save-every)")
    per_device_eval_batch_size: int | None = _hf("per_device_eval_batch_size", None,
                                                 help="examples per evaluation batch (default: the larger of the "
                                                      "training batch size and 64)")
    average_tokens_across_devices: bool | None = _hf(
        "average_tokens_across_devices", None,
        help="divide a causal LM's loss by the tokens of every process (default: yes for causal LMs, no for "
             "classifiers, whose loss is a per-batch mean)")
    # not ``device``: TrainingArguments' property of that name is the torch device it set up
    train_on: str = _own("auto", "where to train: auto (CUDA when there is one), cpu, cuda (pick a GPU with "
                                 "CUDA_VISIBLE_DEVICES)", choices=list(DEVICES), aliases=["--device"])
    save_every: float = _own(0.1, "checkpoint every N steps, or that fraction (< 1) of the run; 0 = never (sets "
                                  "save_steps unless that is given)")
    export_dtype: str = _own("base", "the exported PEFT adapter's weights: base (each base layer's compute dtype: "
                                     "bf16 for a bf16 or 4-bit base), float32 (the masters, exact), bfloat16, float16",
                             choices=list(EXPORT_DTYPES))

    def __post_init__(self) -> None:
        check_device(self.train_on)
        check_export_dtype(self.export_dtype)
        check_span("save_every", self.save_every, zero=True)
        check_span("warmup", self.warmup_steps, zero=True)
        checks = {"per_device_train_batch_size": self.per_device_train_batch_size > 0,
                  "learning_rate": self.learning_rate > 0, "num_train_epochs": self.num_train_epochs > 0,
                  "max_steps": self.max_steps == -1 or self.max_steps > 0, "weight_decay": self.weight_decay >= 0,
                  "gradient_accumulation_steps": isinstance(self.gradient_accumulation_steps, int)
                  and self.gradient_accumulation_steps >= 1}
        for name, ok in checks.items():
            if not ok:
                raise DynloraError(f"{name} {getattr(self, name)!r} is out of range")
        if self.bf16 and self.fp16:
            raise DynloraError("bf16 and fp16 are both set; choose one mixed precision")
        if self.use_cpu and self.train_on == "cuda":
            raise DynloraError("use_cpu and device 'cuda' are both set; choose one (--device cpu is use_cpu)")
        if self.train_on == "cpu":
            self.use_cpu = True  # before transformers sets the device up below: the first set-up is the one kept
        for name, how in MANAGED_FIELDS.items():
            if getattr(self, name) is not None:
                raise DynloraError(f"{name} is set by dynlora; use {how}")
        if self.deepspeed is not None:
            raise DynloraError(DEEPSPEED_REFUSAL.format(what=f"deepspeed {self.deepspeed!r}"))
        left = [name for name in LEFT_TO_THE_RUN if getattr(self, name) is None]
        for name in left:
            setattr(self, name, LEFT_TO_THE_RUN[name])
        # "auto" on a machine without CUDA is the CPU for transformers' checks (bf16 there), but stays "auto" in the
        # recorded settings: the same config trains on the GPU of another machine
        on_cpu = not self.use_cpu and resolve_device(self.train_on) == "cpu"
        self.use_cpu = self.use_cpu or on_cpu
        try:
            super().__post_init__()
        except (ValueError, TypeError) as err:  # transformers' own check of a field
            raise DynloraError(f"training arguments: {' '.join(str(err).split())}") from None
        for name in left:
            setattr(self, name, None)
        if on_cpu:
            self.use_cpu = False

    def for_run(self, work: Path, total_steps: int, tokens_across_devices: bool) -> DynloraTrainingArguments:
        """The Trainer's arguments for a run of exactly ``total_steps`` optimizer steps in the folder ``work``:
        the fields left None decided, checkpoints in ``work/checkpoints``."""
        every = save_interval(self.save_every, total_steps)
        decided: dict[str, Any] = dict(
            output_dir=str(work / "checkpoints"),
            max_steps=total_steps,  # exactly the steps the methods' schedules assume
            data_seed=self.seed if self.data_seed is None else self.data_seed,
            use_cpu=self.use_cpu or resolve_device(self.train_on) == "cpu",
            save_strategy="steps" if every else "no", save_steps=every or 500,
            logging_steps=logging_interval(total_steps, every),
            per_device_eval_batch_size=max(self.per_device_train_batch_size, 64),
            # the Trainer scales each process's loss by the number of processes, which is right only for a loss
            # that divides by the global token count (causal LMs); a classifier's mean loss would count double
            average_tokens_across_devices=tokens_across_devices)
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            decided["activation_checkpointing_kwargs"] = {"use_reentrant": False}
        given = {name: getattr(self, name) for name in decided if name in LEFT_TO_THE_RUN and name != "output_dir"
                 and getattr(self, name) is not None}
        return replace(self, **{**decided, **given})


def save_interval(every: float, total_steps: int) -> int:
    """Steps between checkpoints: ``every`` steps, or that fraction (< 1) of the run; 0 = never."""
    return span_steps(every, total_steps) if every else 0


def logging_interval(total_steps: int, save_every: int = 0) -> int:
    """Log about 20 times a run, at least every 50 steps, and at every checkpoint (a divisor of the
    ``save_every`` steps): the Trainer's loss since the last log dies with a killed process, so a
    resumed run's log lines equal a straight run's only when a checkpoint never falls inside a window."""
    steps = max(1, min(50, total_steps // 20))
    return math.gcd(steps, save_every) if save_every else steps
