"""``dynlora train``'s arguments: dynlora's own dataclasses plus the whole of ``TrainingArguments``.

The command is an ``HfArgumentParser`` over ``ModelArguments``, ``DataArguments``, ``AdapterArguments``,
one dataclass of knobs per registered method (made from its config) and ``DynloraTrainingArguments``:
transformers' ``TrainingArguments`` with dynlora's defaults where they differ, and the flags of
dynlora 0.3 (``--lr``, ``--epochs``, ``--batch-size``, ...) as aliases. So every Trainer flag works
under its usual name, and a YAML or JSON file holds the same keys (``dynlora train run.yaml``).

``options_from`` turns parsed values into ``TrainOptions``; ``config_of`` is its inverse, the
``config.yaml`` a run folder records: read back, it gives the same ``TrainOptions`` and so the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import SaveStrategy
from transformers.training_args import OptimizerNames

from dynlora.core.count import BUDGET_UNITS
from dynlora.core.inject import ADAPTER_DTYPES, parse_targets
from dynlora.data.splits import EVAL_SPLITS
from dynlora.errors import DynloraError
from dynlora.hf.device import DEVICES
from dynlora.hf.models import DTYPES
from dynlora.io.adapter_file import EXPORT_DTYPES
from dynlora.methods import registry
from dynlora.methods.config import flag_of, knobs, type_of
from dynlora.training.options import MANAGED_FIELDS, TRAINER_DEFAULTS, TRAINER_FIELDS, TrainOptions

_OPTS = TrainOptions.__dataclass_fields__


def _arg(name: str, help: str, aliases: tuple[str, ...] = (), **kw: Any) -> Any:
    """A field with ``TrainOptions.<name>``'s default and its flag's help (and aliases, choices)."""
    default = _OPTS[name].default if name in _OPTS else kw.pop("default")
    meta = {"help": help, **kw, **({"aliases": list(aliases)} if aliases else {})}
    return field(default=default, metadata=meta)


@dataclass
class ModelArguments:
    _argument_group_name = "model"
    model: str | None = _arg("model", "local HF model folder, hub name, or 'minilm' (the default)",
                             ("--model_name_or_path", "--model-name-or-path"))
    dtype: str | None = _arg("dtype", "the base model's weights (default: as transformers loads them)",
                             choices=list(DTYPES))
    load_in_4bit: bool = _arg("load_in_4bit", "a 4-bit nf4 base (QLoRA; double quantisation, computing in --dtype, "
                              "bfloat16 by default)", default=False)
    load_in_8bit: bool = _arg("load_in_8bit", "an 8-bit (LLM.int8) base", default=False)
    device: str = _arg("device", "where to train: auto (CUDA when there is one), cpu, cuda (pick a GPU with "
                       "CUDA_VISIBLE_DEVICES)", choices=list(DEVICES))
    shard_base: bool = _arg("shard_base", "FSDP2 for a base too large for one device: shard the frozen base "
                            "across the processes at load time (transformers' DistributedConfig); the adapters "
                            "stay whole in every process (with torchrun / accelerate launch)")


@dataclass
class DataArguments:
    _argument_group_name = "data"
    task: str | None = _arg("task", "built-in task: rt-polarity (the default), trec6; causal LM: chatterbot, "
                            "rt-polarity-instruct, trec6-instruct")
    dataset: str | None = _arg("dataset", "local .csv/.jsonl file (or a HF datasets name when online)")
    text_column: str = _arg("text_column", "the text column of a --dataset file")
    label_column: str = _arg("label_column", "the label column of a --dataset file")
    train_size: int | None = _arg("train_size", "training examples to use (a seeded subset); 0 = the whole split")
    max_length: int = _arg("max_length", "tokens per example, longer ones truncated")
    eval_split: str = _arg("eval_split", "the held-out split the finished run is scored on: test, or validation "
                           "(to choose settings without looking at test)", choices=list(EVAL_SPLITS))


@dataclass
class AdapterArguments:
    _argument_group_name = "adapters"
    method: str = field(default_factory=registry.default_method, metadata={
        "help": f"one of: {', '.join(registry.names())} (name:variant where a method takes one)"})
    rank: int = _arg("rank", "LoRA rank r of every adapter", ("--lora_r", "--lora-r"))
    alpha: float = _arg("alpha", "LoRA alpha; the update is scaled by alpha / r", ("--lora_alpha", "--lora-alpha"))
    dropout: float = _arg("dropout", "dropout on the adapters' input", ("--lora_dropout", "--lora-dropout"))
    targets: str = _arg("targets", "all-linear, comma-separated module names, or a regex",
                        ("--target_modules", "--target-modules"))
    rank_budget: int | None = _arg("rank_budget", "total rank over all adapters, split evenly (default: rank x "
                                   "number of adapters)")
    budget_unit: str = _arg("budget_unit", "what a method that moves ranks conserves: rank (the total "
                            "rank), params or flops (what plain LoRA of those ranks costs; gates included)",
                            choices=list(BUDGET_UNITS))
    adapter_dtype: str = _arg("adapter_dtype", "the adapters' weights: float32 (masters), bfloat16, float16, or base",
                              choices=list(ADAPTER_DTYPES))
    export_dtype: str = _arg("export_dtype", "the exported PEFT adapter's weights: base (each base layer's compute "
                             "dtype: bf16 for a bf16 or 4-bit base), float32 (the masters, exact), bfloat16, float16",
                             choices=list(EXPORT_DTYPES))
    save_every: float = _arg("save_every", "checkpoint every N steps, or that fraction (< 1) of the run; 0 = never "
                             "(sets save_steps unless that is given)")
    resume: str | None = _arg("resume", "continue the unfinished (killed) run RUN from its last complete checkpoint, "
                              "with the options it was started with (other flags are ignored)", default=None,
                              metavar="RUN")


def _hf(name: str, default: Any, *aliases: str, help: str | None = None) -> Any:
    """``TrainingArguments.<name>`` with dynlora's default (and old flag names as aliases)."""
    meta = dict(TrainingArguments.__dataclass_fields__[name].metadata)
    if help is not None:
        meta["help"] = help
    if aliases:
        meta["aliases"] = list(aliases)
    return field(default=default, metadata=meta)


@dataclass
class DynloraTrainingArguments(TrainingArguments):
    """``TrainingArguments`` as ``dynlora train`` takes them: dynlora's defaults, old flags as aliases.

    A field left at None here is decided by dynlora for the run (see its help)."""

    _argument_group_name = "transformers.TrainingArguments (every Trainer flag; here with dynlora's defaults)"
    output_dir: str | None = _hf("output_dir", None, "--output",
                                 help="the run folder (default runs/<timestamp>); checkpoints go to its checkpoints/")
    per_device_train_batch_size: int = _hf("per_device_train_batch_size", _OPTS["batch_size"].default,
                                           "--batch-size", "--batch_size")
    num_train_epochs: float = _hf("num_train_epochs", _OPTS["epochs"].default, "--epochs")
    learning_rate: float = _hf("learning_rate", _OPTS["lr"].default, "--lr")
    warmup_steps: float = _hf("warmup_steps", _OPTS["warmup"].default, "--warmup-ratio", "--warmup_ratio")
    weight_decay: float = _hf("weight_decay", _OPTS["weight_decay"].default)
    gradient_accumulation_steps: int = _hf("gradient_accumulation_steps", _OPTS["grad_accum"].default,
                                           "--grad-accum", "--grad_accum")
    seed: int = _hf("seed", _OPTS["seed"].default)
    optim: OptimizerNames | str = _hf("optim", TRAINER_DEFAULTS["optim"])
    save_total_limit: int | None = _hf("save_total_limit", TRAINER_DEFAULTS["save_total_limit"])
    disable_tqdm: bool | None = _hf("disable_tqdm", TRAINER_DEFAULTS["disable_tqdm"])
    logging_nan_inf_filter: bool = _hf("logging_nan_inf_filter", TRAINER_DEFAULTS["logging_nan_inf_filter"])
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


# TrainOptions fields that the model group's flags make (the rest of TrainOptions' fields are flags by their name)
_QUANTIZE_FLAGS = {"load_in_4bit": "4bit", "load_in_8bit": "8bit"}


def _knob_dest(f: dataclasses.Field) -> str:
    return flag_of(f).lstrip("-").replace("-", "_")


def _method_dataclasses() -> list[type]:
    """One dataclass per registered method with a config: its knobs, each flag once (methods share ``--min-rank``)."""
    seen: set[str] = set()
    made = []
    for spec in registry.specs():
        if spec.config is None:
            continue
        fields = []
        for f, meta in knobs(spec.config):
            dest = _knob_dest(f)
            if dest in seen:
                continue
            seen.add(dest)
            kind = type_of(f)
            # choices are the config's to check (one line naming the valid ones, also for a name:variant)
            fields.append((dest, kind | None if f.default is None else kind,
                           field(default=f.default, metadata={"help": meta["help"]})))
        made.append(dataclasses.make_dataclass(
            f"{spec.name.title().replace('-', '')}Arguments", fields,
            namespace={"_argument_group_name": f"{spec.name}: {spec.help} (--method {spec.name})"}))
    return made


def train_flag(name: str) -> dict[str, Any]:
    """``help`` and ``choices`` of ``dynlora train``'s flag for the field ``name`` of its argument dataclasses,
    for another command that takes the same value (``dynlora compare``): declared once, here."""
    for dtype in (ModelArguments, DataArguments, AdapterArguments, DynloraTrainingArguments):
        found = dtype.__dataclass_fields__.get(name)
        if found is not None and "help" in found.metadata:
            return {k: found.metadata[k] for k in ("help", "choices") if k in found.metadata}
    raise KeyError(f"dynlora train has no flag for {name!r}")


def argument_types() -> list[type]:
    """Every dataclass ``dynlora train`` parses, in the order of its help."""
    return [ModelArguments, DataArguments, AdapterArguments, *_method_dataclasses(), DynloraTrainingArguments]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's flags (and its config-file argument) on ``parser``: each dataclass's fields as
    ``HfArgumentParser`` lays them out, in a group of its own."""
    parser.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                        help="a YAML or JSON file of these flags' values (keys as the flags' names: "
                             "learning_rate: 0.001); flags given here override it")
    for dtype in argument_types():
        group = parser.add_argument_group(dtype._argument_group_name) if hasattr(dtype, "_argument_group_name") \
            else parser
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                f.type = hints[f.name]  # as HfArgumentParser._add_dataclass_arguments does
                HfArgumentParser._parse_dataclass_field(group, f)


@functools.cache
def _trainer_baseline() -> dict[str, Any]:
    """What the parser gives for each TrainingArguments field when no flag sets it (not always the dataclass
    default: HfArgumentParser reads ``debug`` as None and ``include_num_input_tokens_seen`` as False)."""
    return vars(HfArgumentParser(DynloraTrainingArguments).parse_args([]))


LAUNCHER_FIELDS = {"local_rank"}  # a launcher may pass it; the run reads LOCAL_RANK instead, so it is dropped


def trainer_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments fields in ``values`` that TrainOptions does not hold and that a flag or config key
    changed from ``DynloraTrainingArguments``' defaults: what the run changes of the Trainer's arguments."""
    baseline = _trainer_baseline()
    ignored = set(TRAINER_FIELDS) | LAUNCHER_FIELDS
    return {k: v for k, v in values.items() if k in baseline and k not in ignored and v != baseline[k]}


def options_from(values: dict[str, Any]) -> TrainOptions:
    """``TrainOptions`` from the parsed flags / config keys (every key ``argument_types`` declares)."""
    baseline = _trainer_baseline()
    managed = [k for k in MANAGED_FIELDS.keys() - LAUNCHER_FIELDS if k in values and values[k] != baseline[k]]
    if managed:
        raise DynloraError(f"{managed[0]} is set by dynlora; use {MANAGED_FIELDS[managed[0]]}")
    quantize = [q for flag, q in _QUANTIZE_FLAGS.items() if values.get(flag)]
    if len(quantize) > 1:
        raise DynloraError("load_in_4bit and load_in_8bit are both set; choose one")
    device = values["device"]
    if values.get("use_cpu"):
        if device == "cuda":
            raise DynloraError("use_cpu and device 'cuda' are both set; choose one (--device cpu is use_cpu)")
        device = "cpu"
    spec = registry.get(values["method"])
    method_config = None
    if spec.config is not None:
        method_config = {f.name: values[_knob_dest(f)] for f, _ in knobs(spec.config)}
    targets = values["targets"]
    own = {f.name: values[f.name] for f in dataclasses.fields(TrainOptions) if f.name in values}
    return TrainOptions(**{
        **own, "targets": tuple(targets) if isinstance(targets, list) else parse_targets(targets),
        "train_size": None if values["train_size"] == 0 else values["train_size"],
        "quantize": quantize[0] if quantize else None, "device": device,
        "gradient_checkpointing": bool(values.get("activation_checkpointing") or values.get("gradient_checkpointing")),
        **{TRAINER_FIELDS[k]: values[k] for k in TRAINER_FIELDS if k not in ("use_cpu", "activation_checkpointing",
                                                                               "gradient_checkpointing")},
        "method_config": method_config, "trainer": trainer_overrides(values)})


def config_of(opts: TrainOptions) -> dict[str, Any]:
    """The flat config (flag names as keys) that ``options_from`` reads back into ``opts``."""
    out: dict[str, Any] = {}
    for dtype in (ModelArguments, DataArguments, AdapterArguments):
        for f in dataclasses.fields(dtype):
            if f.name in _OPTS:
                out[f.name] = getattr(opts, f.name)
    out["targets"] = list(opts.targets) if isinstance(opts.targets, tuple) else opts.targets
    out["train_size"] = 0 if opts.train_size is None else opts.train_size
    out.update({flag: opts.quantize == q for flag, q in _QUANTIZE_FLAGS.items()})
    spec = registry.get(opts.method)
    if spec.config is not None:
        out.update({_knob_dest(f): getattr(opts.method_config, f.name) for f, _ in knobs(spec.config)})
    shared = {k: v for k, v in TRAINER_FIELDS.items() if k not in ("use_cpu", "gradient_checkpointing")}
    out.update({k: getattr(opts, name) for k, name in shared.items()})
    out.update(opts.trainer)
    return out


def config_yaml(opts: TrainOptions) -> str:
    """``config.yaml`` of a run: ``dynlora train runs/x/config.yaml`` trains it again."""
    head = ("# dynlora train: this run's resolved configuration; `dynlora train THIS_FILE --output_dir NEW` trains "
            "it again.\n# TrainingArguments fields not listed are dynlora's defaults (dynlora train --help).\n")
    return head + yaml.safe_dump(config_of(opts), sort_keys=False, default_flow_style=None)


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The values of a YAML / JSON config file, keyed by the parser's destinations; a one-line error for an
    unreadable file or an unknown key (naming the closest valid ones)."""
    file = Path(path)
    if not file.is_file():
        raise DynloraError(f"config file {path!r} does not exist")
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise DynloraError(f"config file {path!r} is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: "
                           f"{' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DynloraError(f"config file {path!r} must hold a mapping of flag names to values, not "
                           f"{type(data).__name__}")
    names = {opt.lstrip("-"): action.dest for action in parser._actions for opt in action.option_strings
             if opt.startswith("--") and action.dest not in ("help", "config")
             and not isinstance(action, argparse._StoreFalseAction)}  # --no_x: set x: false instead
    out = {}
    for key, value in data.items():
        if str(key) not in names:
            close = difflib.get_close_matches(str(key), sorted({*names.values()}), n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else "; see dynlora train --help"
            raise DynloraError(f"unknown key {key!r} in config file {path!r}{hint}")
        out[names[str(key)]] = value
    return out
