"""``RunConfig``: one ``dynlora train`` run, declared once.

Four typed parts: the base model (``ModelConfig``), the data (``DataConfig``), the adapters and the
method with its config (``methods.AdapterSettings``) and the Trainer's arguments
(``hf.arguments.DynloraTrainingArguments``, a ``TrainingArguments``). ``dynlora train``'s flags are
these parts' fields (``training.arguments``); ``dynlora compare`` makes its cells with
``dataclasses.replace``; ``run.json`` and ``config.yaml`` hold the same values under the flags' names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dynlora.data.splits import EVAL_SPLITS
from dynlora.errors import DynloraError
from dynlora.hf.arguments import DynloraTrainingArguments
from dynlora.hf.models import DTYPES
from dynlora.methods.settings import AdapterSettings


def _flag(default: Any, help: str, aliases: tuple[str, ...] = (), **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta, **({"aliases": list(aliases)} if aliases else {})})


@dataclass(frozen=True)
class ModelConfig:
    """The base model: which one, its weights' dtype, a quantized or sharded base."""

    _argument_group_name = "model"

    model: str | None = _flag(None, "local HF model folder, hub name, or 'minilm' (the default)",
                              ("--model_name_or_path", "--model-name-or-path"))
    dtype: str | None = _flag(None, "the base model's weights (default: as transformers loads them)",
                              choices=list(DTYPES))
    load_in_4bit: bool = _flag(False, "a 4-bit nf4 base (QLoRA; double quantisation, computing in --dtype, bfloat16 "
                                      "by default)")
    load_in_8bit: bool = _flag(False, "an 8-bit (LLM.int8) base")
    shard_base: bool = _flag(False, "FSDP2 for a base too large for one device: shard the frozen base across the "
                                    "processes at load time (transformers' DistributedConfig); the adapters stay "
                                    "whole in every process (with torchrun / accelerate launch)")

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise DynloraError(f"dtype {self.dtype!r} is not valid; valid: {', '.join(DTYPES)}")
        if self.load_in_4bit and self.load_in_8bit:
            raise DynloraError("load_in_4bit and load_in_8bit are both set; choose one")
        if self.shard_base and self.quantize is not None:
            raise DynloraError(f"shard_base and a {self.quantize} base are both set; shard a float base, or quantize "
                               "it and train data parallel without sharding")

    @property
    def quantize(self) -> str | None:
        """The bitsandbytes base: ``4bit``, ``8bit`` or None."""
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None


@dataclass(frozen=True)
class DataConfig:
    """The task or dataset, how much of it trains, and the split the finished run is scored on."""

    _argument_group_name = "data"

    task: str | None = _flag(None, "built-in task: rt-polarity (the default), trec6; causal LM: chatterbot, "
                                   "rt-polarity-instruct, trec6-instruct")
    dataset: str | None = _flag(None, "local .csv/.jsonl file (or a HF datasets name when online)")
    text_column: str = _flag("text", "the text column of a --dataset file")
    label_column: str = _flag("label", "the label column of a --dataset file")
    train_size: int | None = _flag(3000, "training examples to use (a seeded subset); 0 = the whole split")
    max_length: int = _flag(64, "tokens per example, longer ones truncated")
    eval_split: str = _flag("test", "the held-out split the finished run is scored on: test, or validation (to "
                                    "choose settings without looking at test)", choices=list(EVAL_SPLITS))

    def __post_init__(self) -> None:
        if self.train_size == 0:
            object.__setattr__(self, "train_size", None)  # the whole split
        if self.train_size is not None and self.train_size < 0:
            raise DynloraError(f"train_size {self.train_size!r} is out of range")
        if self.max_length <= 1:
            raise DynloraError(f"max_length {self.max_length!r} is out of range")
        if self.eval_split not in EVAL_SPLITS:
            raise DynloraError(f"eval_split {self.eval_split!r} is not valid; valid: {', '.join(EVAL_SPLITS)}")


@dataclass(frozen=True)
class RunConfig:
    """One run: the base model, the data, the adapters and method, the Trainer's arguments."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapters: AdapterSettings = field(default_factory=AdapterSettings)
    trainer: DynloraTrainingArguments = field(default_factory=DynloraTrainingArguments)

    def __post_init__(self) -> None:
        for name, kind in (("model", ModelConfig), ("data", DataConfig), ("adapters", AdapterSettings),
                           ("trainer", DynloraTrainingArguments)):
            if not isinstance(getattr(self, name), kind):
                raise DynloraError(f"{name} {type(getattr(self, name)).__name__} is not a {kind.__name__}")
        if self.model.shard_base and getattr(self.adapters.method_config, "fold", False):
            raise DynloraError("shard_base and fold are both set; a sharded base weight cannot take a folded adapter")
        if self.trainer.fsdp:
            self._check_fsdp()

    def _check_fsdp(self) -> None:
        """accelerate's FSDP (``--fsdp``) shards every parameter, the adapters' too: ranks move only inside a
        fixed capacity of rank slots, and FSDP2 is the version whose sharded parameters dynlora writes."""
        for name, clash in (("shard_base", self.model.shard_base), ("quantize", self.model.quantize),
                            ("fold", getattr(self.adapters.method_config, "fold", False))):
            if clash:
                raise DynloraError(f"fsdp and {name} are both set; {name} with accelerate's FSDP has not been run "
                                   "(--shard-base is FSDP2 on the frozen base alone)")
        version = int(self.trainer.fsdp_config.get("version", 2))
        if version != 2:
            raise DynloraError(f"fsdp version {version}: dynlora moves ranks inside FSDP2's sharded adapters only; "
                               "set --fsdp_config '{\"version\": 2}'")
        if self.adapters.capacity is None:
            raise DynloraError("fsdp shards the adapters, whose ranks then move only inside a fixed capacity of "
                               "rank slots; add --capacity N (N at least --rank, e.g. 2 x --rank)")
