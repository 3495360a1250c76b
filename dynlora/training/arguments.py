"""``dynlora train``'s arguments: the fields of ``RunConfig``'s parts, and every method's knobs.

The command parses the fields of ``ModelConfig``, ``DataConfig``, ``AdapterSettings``, each method's
knobs (a group per method, from its config) and ``DynloraTrainingArguments`` (the whole of
``TrainingArguments``), each as ``HfArgumentParser`` lays a field out. So every Trainer flag works under
its usual name, and a YAML or JSON file holds the same keys (``dynlora train run.yaml``).

``run_config`` makes the ``RunConfig`` from such values (flags, a config file, a record); ``config_values``
gives them back, as ``config.yaml`` and ``run.json`` hold them: read back, the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from dynlora.core.inject import parse_targets
from dynlora.errors import DynloraError
from dynlora.hf.arguments import DynloraTrainingArguments
from dynlora.methods import registry
from dynlora.methods.config import flag_of, knobs, optional, type_of
from dynlora.methods.settings import AdapterSettings
from dynlora.training.config import DataConfig, ModelConfig, RunConfig

PARTS = (ModelConfig, DataConfig, AdapterSettings)  # in the order of the help, the Trainer's arguments last
LAUNCHER_FIELDS = {"local_rank"}  # a launcher may pass it; the run reads LOCAL_RANK instead, so it is dropped
_NOT_VALUES = {"command", "config", "resume", "extra"}  # the command line's own, not the run's


def _knob_dest(f: dataclasses.Field) -> str:
    return flag_of(f).lstrip("-").replace("-", "_")


def knob_groups() -> list[tuple[str, list[dataclasses.Field]]]:
    """(title, fields) per registered method with a config: its knobs as flags, each flag once (methods share
    ``--min-rank``)."""
    seen: set[str] = set()
    groups = []
    for spec in registry.specs():
        if spec.config is None:
            continue
        fields = []
        for f, meta in knobs(spec.config):
            dest = _knob_dest(f)
            if dest in seen:
                continue
            seen.add(dest)
            # choices are the config's to check (one line naming the valid ones, also for a name:variant)
            flag = dataclasses.field(default=f.default, metadata={"help": meta["help"]})
            flag.name, flag.type = dest, type_of(f) | None if f.default is None else type_of(f)
            fields.append(flag)
        groups.append((f"{spec.name}: {spec.help} (--method {spec.name})", fields))
    return groups


class _Raising(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise DynloraError(message)


def knob_value(f: dataclasses.Field, text: str) -> Any:
    """A method knob's value from text (``dynlora compare``'s ``name@knob=value``), read as ``dynlora train``
    reads the knob's flag; ``none`` is None where the knob may be None (a choice named none stays a string)."""
    if text.lower() == "none" and optional(f):
        return None
    flag = dataclasses.field(default=f.default)
    flag.name, flag.type = "value", type_of(f)
    parser = _Raising(add_help=False)
    HfArgumentParser._parse_dataclass_field(parser, flag)
    try:
        return parser.parse_args(["--value", text]).value
    except DynloraError:
        raise DynloraError(f"{f.name} must be {type_of(f).__name__}") from None


def _fields(part: type) -> list[dataclasses.Field]:
    """A part's fields that are flags, as ``HfArgumentParser`` reads them: types resolved, a field's ``cli_type``
    (a value the command line gives as text) as its type."""
    hints = typing.get_type_hints(part)
    out = []
    for f in dataclasses.fields(part):
        if not f.init or not f.metadata.get("flag", True):
            continue
        meta = {k: v for k, v in f.metadata.items() if k not in ("flag", "cli_type")}
        flag = dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=meta)
        flag.name, flag.type = f.name, f.metadata.get("cli_type", hints[f.name])
        out.append(flag)
    return out


def add_train_arguments(parser: argparse.ArgumentParser, config_file: bool = True) -> None:
    """The train command's flags (and its config-file argument) on ``parser``: each part's fields as
    ``HfArgumentParser`` lays them out, in a group of its own."""
    if config_file:
        parser.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                            help="a YAML or JSON file of these flags' values (keys as the flags' names: "
                                 "learning_rate: 0.001); flags given here override it")
        parser.add_argument("--resume", default=None, metavar="RUN",
                            help="continue the unfinished (killed) run RUN from its last complete checkpoint, with "
                                 "the settings it was started with (other flags are ignored)")
    groups = [(part._argument_group_name, _fields(part)) for part in PARTS]
    groups += [*knob_groups(), (DynloraTrainingArguments._argument_group_name, _fields(DynloraTrainingArguments))]
    for title, fields in groups:
        group = parser.add_argument_group(title)
        for f in fields:
            HfArgumentParser._parse_dataclass_field(group, f)


def _part(part: type, values: dict[str, Any], **extra: Any) -> Any:
    names = {f.name for f in dataclasses.fields(part) if f.init}
    return part(**{k: v for k, v in values.items() if k in names}, **extra)


def run_config(values: dict[str, Any]) -> RunConfig:
    """The run that ``values`` describe: flag names (their destinations) as keys, as the command line, a config
    file or ``config_values`` give them; a key not given takes its field's default. A one-line error for a key
    that is no flag, naming the closest ones."""
    values = {k: v for k, v in values.items() if k not in _NOT_VALUES | LAUNCHER_FIELDS}
    spec = registry.get(values.get("method") or registry.default_method())
    own = {f.name: f for f, _ in knobs(spec.config)} if spec.config is not None else {}
    every_knob = {f.name for _, fields in knob_groups() for f in fields}
    known = {f.name for part in (*PARTS, DynloraTrainingArguments) for f in dataclasses.fields(part) if f.init}
    unknown = sorted(set(values) - known - every_knob)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known | every_knob), n=3, cutoff=0.6)
        raise DynloraError(f"unknown setting {unknown[0]!r}{'; closest: ' + ', '.join(close) if close else ''}")
    method_config = values.get("method_config")
    if own and (method_config is None or isinstance(method_config, dict)):  # a knob's own key wins over its flag
        method_config = {**{name: values[_knob_dest(f)] for name, f in own.items() if _knob_dest(f) in values},
                         **(method_config or {})}
    targets = values.get("targets", "all-linear")
    return RunConfig(
        model=_part(ModelConfig, values), data=_part(DataConfig, values),
        adapters=_part(AdapterSettings, {**values, "method_config": method_config,
                                         "targets": parse_targets(targets) if isinstance(targets, str) else targets}),
        trainer=_part(DynloraTrainingArguments, values))


@functools.cache
def _trainer_defaults() -> dict[str, Any]:
    return DynloraTrainingArguments().to_dict()


def config_values(config: RunConfig) -> dict[str, Any]:
    """The flat values (flag names as keys) that ``run_config`` reads back into ``config``: every field of the
    model, data and adapter parts, the method's knobs, dynlora's own Trainer fields and any other Trainer field
    that differs from its default."""
    out: dict[str, Any] = {}
    for part in (config.model, config.data, config.adapters):
        out.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part) if f.metadata.get("flag", True)})
    out["targets"] = list(config.adapters.targets) if isinstance(config.adapters.targets, tuple) \
        else config.adapters.targets
    out["train_size"] = 0 if config.data.train_size is None else config.data.train_size
    method = config.adapters.method_config
    if method is not None and dataclasses.is_dataclass(method):
        out.update({_knob_dest(f): getattr(method, f.name) for f, _ in knobs(type(method))})
    trainer, defaults = config.trainer.to_dict(), _trainer_defaults()
    own = DynloraTrainingArguments.__annotations__
    out.update({k: v for k, v in trainer.items() if k in own or v != defaults.get(k)})
    return out


# what run.json called a setting before the run configuration (dynlora <= 0.5's TrainOptions)
_OLD_NAMES = {"lr": "learning_rate", "batch_size": "per_device_train_batch_size", "epochs": "num_train_epochs",
              "warmup": "warmup_steps", "warmup_ratio": "warmup_steps", "grad_accum": "gradient_accumulation_steps",
              "output": "output_dir", "gradient_checkpointing": "activation_checkpointing", "device": "train_on"}


def recorded_config(options: dict[str, Any]) -> RunConfig:
    """The run a ``run.json``'s ``options`` describe: ``config_values``' keys, or the flat options of a run
    made before the run configuration (renamed here, so an old unfinished run still resumes)."""
    if "lr" not in options:
        return run_config(options)
    old = dict(options)
    values = dict(old.pop("trainer", None) or {})
    quantize = old.pop("quantize", None)
    values.update(load_in_4bit=quantize == "4bit", load_in_8bit=quantize == "8bit")
    for key, value in old.items():
        values[_OLD_NAMES.get(key, key)] = value
    if values.get("train_on") is None:
        values["train_on"] = "auto"
    return run_config(values)


def config_yaml(config: RunConfig) -> str:
    """``config.yaml`` of a run: ``dynlora train runs/x/config.yaml`` trains it again."""
    head = ("# dynlora train: this run's resolved configuration; `dynlora train THIS_FILE --output_dir NEW` trains "
            "it again.\n# TrainingArguments fields not listed are dynlora's defaults (dynlora train --help).\n")
    return head + yaml.safe_dump(config_values(config), sort_keys=False, default_flow_style=None)

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
