"""``TrainOptions``: everything one ``dynlora train`` run takes, checked on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dynlora.core.count import check_budget_unit
from dynlora.core.inject import ADAPTER_DTYPES
from dynlora.data.splits import EVAL_SPLITS
from dynlora.decide.schedule import check_span
from dynlora.errors import DynloraError
from dynlora.hf.device import check_device
from dynlora.hf.models import DTYPES, QUANTIZATIONS
from dynlora.io.adapter_file import check_export_dtype
from dynlora.methods import registry
from dynlora.methods.base import AdapterSettings

# TrainingArguments fields that are TrainOptions fields under dynlora's own names: ``trainer`` may not hold them
TRAINER_FIELDS = {"learning_rate": "lr", "per_device_train_batch_size": "batch_size", "num_train_epochs": "epochs",
                  "max_steps": "max_steps", "warmup_steps": "warmup", "weight_decay": "weight_decay", "seed": "seed",
                  "output_dir": "output", "bf16": "bf16", "fp16": "fp16", "gradient_accumulation_steps": "grad_accum",
                  "activation_checkpointing": "gradient_checkpointing",
                  "gradient_checkpointing": "gradient_checkpointing", "use_cpu": "device"}
# dynlora's own values of TrainingArguments fields whose transformers defaults differ (or may change):
# AdamW without the fused kernel (what every method's optimizer was, so runs stay comparable), no reporting
# unless asked, the last two checkpoints, a progress bar even when not on a terminal, no per-step isnan() sync,
# and a collective that waits 2 minutes, not 30, before it gives up on a process that hangs (a dead one's
# connection closes at once under gloo; NCCL only learns it from this timeout)
TRAINER_DEFAULTS: dict[str, Any] = {"optim": "adamw_torch", "report_to": "none", "save_total_limit": 2,
                                    "eval_strategy": "no", "disable_tqdm": False, "logging_nan_inf_filter": False,
                                    "dataloader_num_workers": 0, "ddp_timeout": 120}
# ... and ones dynlora sets itself: a run resumes with --resume; a launcher's local rank comes from the environment
MANAGED_FIELDS = {"resume_from_checkpoint": "--resume RUN", "local_rank": "the LOCAL_RANK a launcher sets"}


def check_trainer_fields(trainer: dict[str, Any]) -> None:
    """A one-line error for a ``trainer`` key that is no TrainingArguments field, or that TrainOptions owns."""
    if not trainer:
        return
    from transformers import TrainingArguments  # only here: TrainOptions stays light to import

    valid = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in trainer:
        if key not in valid:
            raise DynloraError(f"trainer field {key!r} is not a TrainingArguments field")
        if key in TRAINER_FIELDS:
            raise DynloraError(f"trainer field {key!r} is TrainOptions.{TRAINER_FIELDS[key]}; set that instead")
        if key in MANAGED_FIELDS:
            raise DynloraError(f"trainer field {key!r} is set by dynlora; use {MANAGED_FIELDS[key]}")
        if key == "fsdp" and trainer[key] not in ("", False, None, []):
            # accelerate's FSDP wrapping would shard the adapters too, which then could not change shape
            raise DynloraError(f"fsdp {trainer[key]!r}: accelerate's FSDP wrapping would shard the adapters, whose "
                               "ranks change; use --shard-base (FSDP2 on the frozen base only)")


@dataclass(frozen=True)
class TrainOptions:
    """One run's options. ``method`` is ``name`` or ``name:variant`` (see ``dynlora.methods``);
    ``method_config`` is that method's config (its defaults when None; a dict is read as its fields)."""

    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    method: str = field(default_factory=registry.default_method)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | tuple[str, ...] = "all-linear"
    epochs: float = 1.0
    max_steps: int = -1
    train_size: int | None = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: float = 0.06  # learning-rate warm-up: a fraction (< 1) of the run, or whole steps (TrainingArguments' warmup_steps)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the adapters (a method's own groups may exempt some)
    max_length: int = 64
    eval_split: str = "test"  # the held-out split scored at the end: test, or validation (to choose settings on)
    seed: int = 0
    output: str | None = None
    rank_budget: int | None = None  # total rank over all adapters; default rank x number of adapters
    budget_unit: str = "rank"  # what the methods conserve: rank, params or flops (as plain LoRA of those ranks)
    save_every: float = 0.1  # checkpoint every N steps, or that fraction (< 1) of the run; 0 = never
    dtype: str | None = None  # the base weights: float32 | bfloat16 | float16 (None: as transformers loads them)
    adapter_dtype: str = "float32"  # the adapters' own weights: float32 masters, or bfloat16 | float16 | base
    bf16: bool = False  # mixed precision through the Trainer (autocast)
    fp16: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # non-reentrant, recomputing each block in backward
    quantize: str | None = None  # a bitsandbytes base: 4bit (nf4, QLoRA) | 8bit
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda
    shard_base: bool = False  # FSDP2: the frozen base sharded across the processes at load time
    export_dtype: str = "base"  # the exported PEFT adapter's weights: base (each layer's compute dtype) | float32 | ...
    method_config: Any = None
    trainer: dict[str, Any] = field(default_factory=dict)  # further TrainingArguments fields, applied last

    def __post_init__(self) -> None:
        # an unknown method or variant, or a config of another method, is named here
        object.__setattr__(self, "method_config", registry.resolve_config(self.method, self.method_config))
        checks = {"rank": self.rank > 0, "batch_size": self.batch_size > 0, "lr": self.lr > 0,
                  "epochs": self.epochs > 0, "max_length": self.max_length > 1,
                  "max_steps": self.max_steps == -1 or self.max_steps > 0,
                  "train_size": self.train_size is None or self.train_size > 0,
                  "rank_budget": self.rank_budget is None or self.rank_budget > 0,
                  "weight_decay": self.weight_decay >= 0,
                  "grad_accum": isinstance(self.grad_accum, int) and self.grad_accum >= 1}
        for name, ok in checks.items():
            if not ok:
                raise DynloraError(f"{name} {getattr(self, name)!r} is out of range")
        check_span("save_every", self.save_every, zero=True)
        check_span("warmup", self.warmup, zero=True)
        if not isinstance(self.trainer, dict):
            raise DynloraError(f"trainer {self.trainer!r} must be a dict of TrainingArguments fields")
        check_trainer_fields(self.trainer)
        object.__setattr__(self, "trainer", dict(self.trainer))  # the caller's dict may change; these may not
        if self.bf16 and self.fp16:
            raise DynloraError("bf16 and fp16 are both set; choose one mixed precision")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise DynloraError(f"dtype {self.dtype!r} is not valid; valid: {', '.join(DTYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise DynloraError(f"quantize {self.quantize!r} is not valid; valid: {', '.join(QUANTIZATIONS)}")
        if self.shard_base and self.quantize is not None:
            raise DynloraError(f"shard_base and a {self.quantize} base are both set; shard a float base, or quantize "
                               "it and train data parallel without sharding")
        if self.shard_base and getattr(self.method_config, "fold", False):
            raise DynloraError("shard_base and fold are both set; a sharded base weight cannot take a folded adapter")
        check_budget_unit(self.budget_unit)
        if self.eval_split not in EVAL_SPLITS:
            raise DynloraError(f"eval_split {self.eval_split!r} is not valid; valid: {', '.join(EVAL_SPLITS)}")
        check_device(self.device)
        check_export_dtype(self.export_dtype)
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise DynloraError(f"adapter_dtype {self.adapter_dtype!r} is not valid; valid: {', '.join(ADAPTER_DTYPES)}")

    def adapter_settings(self) -> AdapterSettings:
        """What a method's preparation reads of these options."""
        return AdapterSettings(method=self.method, rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                               targets=self.targets, rank_budget=self.rank_budget, seed=self.seed,
                               budget_unit=self.budget_unit)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready options (``run.json``); ``from_dict`` reads them back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        """Options written by ``as_dict`` (JSON lists become tuples; the method config is rebuilt)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {"warmup": values["warmup_ratio"], **values} if "warmup_ratio" in values else values  # before 0.4
        kwargs = {k: tuple(v) if isinstance(v, list) and k != "trainer" else v
                  for k, v in values.items() if k in known}
        return cls(**kwargs)
