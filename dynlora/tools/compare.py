"""``dynlora compare``: every method side by side on one task, one rank budget, the same steps.

Each (method, seed) cell is one :func:`dynlora.train.train` run into ``DIR/cells/<method>-s<seed>/``.
Within a seed every method sees the same training subset in the same order for the same number of
optimizer steps. ``DIR/results.jsonl`` gets one row per finished cell (appended and flushed at once),
so re-running the same command resumes (a cell killed mid-run goes on from its last complete checkpoint,
or starts again if it had none); ``DIR/meta.json`` holds the settings (a resume with other
settings is refused), the command, machine and date; ``DIR/summary.md`` and the plots are rewritten
at the end of every invocation.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dynlora import __version__
from dynlora.data.instruct import is_instruct
from dynlora.errors import DynloraError
from dynlora.hf.device import resolve_device
from dynlora.methods import registry
from dynlora.methods.base import TrainData
from dynlora.methods.config import knob_before, knobs
from dynlora.tools.rows import CompareRow, make_row
from dynlora.tools.summary import cell_dir, draw_plots, summary_markdown
from dynlora.training.arguments import (add_train_arguments, config_values, knob_groups, knob_value,
                                       recorded_config, run_config)
from dynlora.training.config import RunConfig
from dynlora.training.fit import fit_max_length
from dynlora.training.run_folder import resumable
from dynlora.training.pipeline import task_kind, train


@dataclass(frozen=True)
class Profile:
    """A named preset: the ``dynlora train`` settings every cell shares (flags given to compare override them)
    and the seeds."""

    name: str
    values: Mapping[str, Any] = field(default_factory=dict)  # dynlora train's settings, by their flags' names
    seeds: tuple[int, ...] = (0,)


PROFILES: dict[str, Profile] = {
    # 2 CPU cores: dynlora train's defaults (3000 snippets, 1 epoch = 188 steps per cell). Measured for the three
    # default methods x 1 seed: 5.5 min wall (about 0.49 s/step + 15 s load/eval per cell, one torch thread on a
    # shared machine; 0.28 s/step with two idle threads), so later dynamic methods still fit in ~15 min.
    "quick": Profile("quick"),
    # a GPU: the whole rt-polarity train split (8,493), 3 epochs = 1,593 steps per cell, 3 seeds
    "full": Profile("full", {"train_size": 0, "num_train_epochs": 3.0}, seeds=(0, 1, 2)),
}
# causal-LM instruction tuning (chatterbot, *-instruct, prompt/response JSONL) on the embedded SmolLM2
LM_PROFILES: dict[str, Profile] = {
    # 2 CPU cores: SmolLM2-135M, 800 pairs, batch 8 x <= 64 tokens = 100 steps, about 5 min per cell
    "quick": Profile("quick", {"model": "smollm2", "train_size": 800, "per_device_train_batch_size": 8,
                               "max_length": 64}),
    # a GPU: the whole training split, 3 epochs, longer sequences, 3 seeds
    "full": Profile("full", {"model": "smollm2", "train_size": 0, "num_train_epochs": 3.0, "max_length": 128},
                    seeds=(0, 1, 2)),
}
# a cell's own settings: its method (with its knobs and learning rate), its seed and its folder
PER_CELL = ("method", "seed", "output_dir")


@dataclass(frozen=True)
class CompareOptions:
    """One compare invocation: the ``dynlora train`` settings every cell shares, the methods and seeds, the
    output folder."""

    values: Mapping[str, Any] = field(default_factory=dict)  # dynlora train's settings: the profile's, then flags
    methods: tuple[str, ...] = field(default_factory=registry.compare_defaults)
    seeds: tuple[int, ...] = (0,)
    output: str = "runs/compare"
    profile: str = "quick"
    command: str = ""

    def __post_init__(self) -> None:
        if not self.methods:
            raise DynloraError("methods is empty; give e.g. --methods "
                               + ",".join(registry.compare_defaults()))
        for method in self.methods:
            registry.get(split_method(method)[0])  # names an unknown method or variant
        for name, values in (("method", self.methods), ("seed", self.seeds)):
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise DynloraError(f"{name} {dupes[0]} is given twice")
        if not self.seeds or min(self.seeds) < 0:
            raise DynloraError(f"seeds {list(self.seeds)} must be a non-empty list of integers >= 0")
        own = [k for k in PER_CELL if k in self.values]
        if own:
            raise DynloraError(f"{own[0]} is each cell's own in a compare; give --methods, --seeds or --output")
        if self.values.get("task") is None and self.values.get("dataset") is None:
            object.__setattr__(self, "values", {**self.values, "task": "rt-polarity"})
        self.cell_options(self.methods[0], self.seeds[0])  # checks the shared values

    @functools.cached_property
    def shared(self) -> RunConfig:
        """The run every cell is, but for its method, seed and folder (made once: the cells' loop reads it)."""
        return run_config(dict(self.values))

    def settings(self) -> dict[str, Any]:
        """What every cell shares; a folder made with other settings is not resumed."""
        return {"profile": self.profile, **shared_settings(self.shared),
                # every method's config as its cells run it: cells of any method may join the folder later
                "method_configs": {spec.name: dataclasses.asdict(self.cell_options(spec.name, 0).adapters.method_config)
                                   for spec in registry.specs() if spec.config is not None}}

    def cell_options(self, method: str, seed: int) -> RunConfig:
        """The run of one cell: the shared settings with its method (knobs and learning rate included), seed and
        folder."""
        name, own = split_method(method)
        knobs_of = {k: v for k, v in own.items() if k != "lr"}
        return run_config({**self.values, "method": name, "seed": seed,
                           "output_dir": str(cell_dir(Path(self.output), method, seed)),
                           **({"method_config": knobs_of} if knobs_of else {}),
                           **({"learning_rate": own["lr"]} if "lr" in own else {})})


def shared_settings(config: RunConfig) -> dict[str, Any]:
    """``config``'s values but a cell's own and the method's knobs."""
    knob_names = {f.name for _, fields in knob_groups() for f in fields}
    return {k: v for k, v in config_values(config).items() if k not in PER_CELL and k not in knob_names}


def stored_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """A meta.json's settings as ``settings`` gives them now; a folder made before the run configuration kept
    its profile's fields under their old names, read here with the old run.json's reader."""
    if "lr" not in stored:
        return stored
    old = {k: v for k, v in stored.items() if k not in ("profile", "method_configs")}
    return {"profile": stored.get("profile"), **shared_settings(recorded_config(old)),
            "method_configs": stored.get("method_configs", {})}


def split_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``name@lr=0.02@pull=4`` -> ``("name", {"lr": 0.02, "pull": 4.0})``: a method with its own learning
    rate and knobs of its config (a search over them is one compare).

    ``lr`` and the method's own knobs can differ per method; data, steps, rank budget and every other
    setting stay shared. A knob reads as its type; ``none`` is None.
    """
    name, _, rest = spec.partition("@")
    own: dict[str, Any] = {}
    for item in filter(None, rest.split("@")):
        key, _, value = item.partition("=")
        if key in own:
            raise DynloraError(f"method option {key!r} is given twice in {spec!r}")
        if key == "lr":
            try:
                own["lr"] = float(value)
            except ValueError:
                raise DynloraError(f"method option {item!r} in {spec!r}: lr must be a number") from None
            if not own["lr"] > 0:
                raise DynloraError(f"method option {item!r} in {spec!r}: lr must be > 0")
            continue
        fields = {f.name: f for f, _ in knobs(registry.get(name).config)} if registry.get(name).config else {}
        if key not in fields:
            raise DynloraError(f"method option {item!r} in {spec!r}: valid: lr, {', '.join(fields) or '(no knobs)'}")
        try:
            own[key] = knob_value(fields[key], value)
        except DynloraError as err:
            raise DynloraError(f"method option {item!r} in {spec!r}: {err}") from None
    if len(own) > ("lr" in own):
        registry.resolve_config(name, {k: v for k, v in own.items() if k != "lr"})  # a bad value is named here
    return name, own


def machine(device: str = "auto") -> dict[str, Any]:
    """Where this ran: platform, CPU count, library versions and the device the cells train on."""
    import peft
    import transformers

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "dynlora": __version__, "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if resolve_device(device) == "cuda" else "cpu"}


def read_rows(path: Path) -> list[CompareRow]:
    """Rows of results.jsonl; a torn last line (a run killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_settings(root: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder that is not a compare folder, or one made with other settings.

    The shared settings must match. A method's config matters only where the folder holds cells of that
    method: each knob recorded there must have the same value now, unless the cells' label pins it
    (``name@knob=value`` keeps its rows when that knob's default changes). A knob the record lacks is one added
    since: the cells ran at its ``before`` value (``methods.config.knob``), and a method the record lacks had no
    config then.
    """
    if not root.exists() or not any(root.iterdir()):
        return
    meta = root / "meta.json"
    if not meta.is_file():
        raise DynloraError(f"output {str(root)!r} exists and is not a dynlora compare folder; give a new folder")
    stored = stored_settings(json.loads(meta.read_text()).get("settings", {}))
    shared = sorted((set(stored) | set(settings)) - {"method_configs"})
    diff = [f"{k} {stored.get(k)!r} there, {settings.get(k)!r} now" for k in shared if stored.get(k) != settings.get(k)]
    if diff:
        raise DynloraError(f"output {str(root)!r} was made with other settings ({'; '.join(diff)}); "
                           "give a new --output or the same settings")
    configs, now = stored.get("method_configs", {}), settings.get("method_configs", {})
    for label in sorted({r["method"] for r in read_rows(root / "results.jsonl")}):
        name, own = split_method(label)
        method = registry.get(name).name
        if method not in configs:
            continue
        pinned = {k: v for k, v in own.items() if k != "lr"}  # a knob in the label is the same then and now
        config = registry.get(name).config
        lacked = {k: v for k, v in knob_before(config).items() if k not in configs[method]} if config else {}
        then = _as_run({**lacked, **configs[method], **pinned}, name, now.get(method, {}))
        current = _as_run({**now.get(method, {}), **pinned}, name, now.get(method, {}))
        changed = [f"{k} {v!r} there, {current.get(k, '(gone)')!r} now" for k, v in then.items()
                   if current.get(k, "(gone)") != v]
        if changed:
            raise DynloraError(f"output {str(root)!r} holds {label} cells made with another {method} config "
                               f"({'; '.join(changed)}); give a new --output, or remove its rows from "
                               "results.jsonl to train them again")


def _as_run(values: dict[str, Any], name: str, known: dict[str, Any]) -> dict[str, Any]:
    """A method's recorded knobs as a cell of ``name`` (``method:variant``) ran with them: the variant's own
    settings applied (a variant that switches a knob ran with it switched, whatever the default was). Knobs
    the method no longer has stay as they are, so they show as gone."""
    if not registry.split(name)[1]:
        return values
    kept = {k: v for k, v in values.items() if k in known}
    try:
        resolved = dataclasses.asdict(registry.resolve_config(name, kept))
    except (DynloraError, TypeError, ValueError):  # a value no longer valid: compare the record as it is
        return values
    return {**values, **{k: v for k, v in resolved.items() if k in values}}


def check_budgets(budgets: dict[str, int], unit: str = "rank") -> None:
    """Every method must hold the same budget in ``unit``; names the first that differs."""
    first, expected = next(iter(budgets.items()))
    what = "a total rank budget" if unit == "rank" else f"a budget of plain LoRA's {unit}"
    for method, budget in budgets.items():
        if budget != expected:
            raise DynloraError(f"method {method!r} has {what} of {budget}, but {first!r} has "
                               f"{expected}; every method in a compare needs the same budget")


def preflight_budgets(opts: CompareOptions, methods: list[str]) -> dict[str, int]:
    """Each method's budget from its recipe on a freshly loaded model, before any training."""
    from dynlora.training.fit import total_optimizer_steps
    from dynlora.training.prepare import prepare

    first = opts.cell_options(methods[0], opts.seeds[0])
    budgets = {}
    for method in methods:
        cell = opts.cell_options(method, opts.seeds[0])
        model, examples, data = _fresh_model(first, with_data=registry.get(cell.adapters.method).reads_data)
        budgets[method] = prepare(model, cell, total_optimizer_steps(first.trainer, examples), data).budget
    gc.collect()
    return budgets


def _fresh_model(config: RunConfig, with_data: bool = False) -> tuple[torch.nn.Module, int, TrainData | None]:
    """(a freshly loaded base model, the number of training examples, and ``with_data`` the training split as a
    method that initialises from it reads it) for one cell's run."""
    d, seed = config.data, config.trainer.seed
    if is_instruct(d.task, d.dataset):
        from dynlora.data.instruct import load_instruct
        from dynlora.hf.models import load_causal_lm

        data = load_instruct(d.dataset or d.task, d.train_size, seed)
        model, tokenizer = load_causal_lm(config.model.model, log=tqdm.write)
    else:
        from dynlora.data.text import load_task
        from dynlora.hf.models import load_classifier

        data = load_task(d.task, d.dataset, text_column=d.text_column, label_column=d.label_column,
                         train_size=d.train_size, seed=seed)
        model, tokenizer = load_classifier(config.model.model, data.num_labels)
    if not with_data:
        return model, len(data.train), None
    kind = task_kind(config)  # the training pipeline's own split and collator
    train_ds = kind.split(data, "train", tokenizer, fit_max_length(d.max_length, model, tqdm.write))
    batch = config.trainer.per_device_train_batch_size
    return model, len(data.train), TrainData(train_ds, kind.collator(tokenizer), batch, seed)


def run_compare(opts: CompareOptions) -> list[CompareRow]:
    """Train every missing (method, seed) cell, then write summary.md, meta.json and the plots."""
    root = Path(opts.output)
    settings = opts.settings()
    check_settings(root, settings)
    root.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    meta = {"command": opts.command, "date": started, "machine": machine(opts.shared.trainer.train_on),
            "settings": settings, "methods": list(opts.methods), "seeds": list(opts.seeds)}
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    results = root / "results.jsonl"
    rows = read_rows(results)
    done = {(r["method"], r["seed"]) for r in rows}
    # seed-major order: a full round of methods finishes before the next seed starts
    todo = [(m, s) for s in opts.seeds for m in opts.methods if (m, s) not in done]
    budgets = {r["method"]: r["budget"] for r in rows}
    unknown = [m for m in opts.methods if m not in budgets and any(m == t[0] for t in todo)]
    if unknown:
        budgets.update(preflight_budgets(opts, unknown))
        check_budgets(budgets, opts.shared.adapters.budget_unit)
    bar = tqdm(todo, desc="compare", unit="cell", position=0, dynamic_ncols=True, disable=not todo)
    for i, (method, seed) in enumerate(bar, 1):
        bar.set_description(f"compare {method} seed {seed} ({i}/{len(todo)})")
        cell = opts.cell_options(method, seed)
        metrics = train(cell, log=tqdm.write, resume=unfinished_cell(cell))
        check_budgets({**budgets, method: metrics["budget"]}, opts.shared.adapters.budget_unit)
        row = make_row(method, seed, metrics, cell=str(Path(metrics["output"]).relative_to(root)),
                       invocation=started, device=meta["machine"]["device"])
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        rows.append(row)
        gc.collect()
    bar.close()
    wanted = [r for r in rows if r["method"] in opts.methods and r["seed"] in opts.seeds]
    (root / "summary.md").write_text(summary_markdown(wanted, opts.methods, meta))
    draw_plots(wanted, opts.methods, root)
    print(f"dynlora: compare of {len(opts.methods)} methods x {len(opts.seeds)} seeds written to {root}")
    return wanted


def unfinished_cell(cell: RunConfig) -> bool:
    """Whether ``cell`` goes on from a killed invocation's unfinished run (its options, a complete checkpoint).

    A cell killed before its first checkpoint, or started with other options, is started again: the compare owns
    its cells' folders, and a re-run resumes."""
    return resumable(cell.trainer.output_dir, config_values(cell))


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DynloraError(f"seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``dynlora compare`` flags: its own (profile, methods, seeds, budgets), then every ``dynlora train`` flag,
    which sets that value for every cell over the profile's (``--output``: the compare folder)."""
    p.add_argument("--profile", default="quick", help=f"preset: {', '.join(PROFILES)} (default quick)")
    p.add_argument("--methods", default=",".join(registry.compare_defaults()),
                   help=f"comma-separated: {', '.join(registry.names())}; name@knob=value@lr=0.002 gives one "
                        "method its own knobs and learning rate")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    p.add_argument("--budgets", default=None,
                   help="a budget sweep: comma-separated average ranks per module (1,2,4,8), each an ordinary "
                        "compare in OUTPUT/budget-<b>, then sweep.md and Pareto plots over all of them")
    own = len(p._actions)
    add_train_arguments(p, config_file=False)
    for action in p._actions[own:]:
        action.default = argparse.SUPPRESS  # a flag not given leaves the profile's value
    for action in p._actions[own:]:
        if action.dest == "output_dir":
            action.help = "the compare folder (default runs/compare-<profile>-<task>)"


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (rebuilt from ``args`` when called in-process), with thread settings."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ]
    if sys.argv[1:2] == ["compare"]:
        return shlex.join([*env, "dynlora", *sys.argv[1:]])
    given = [x for k, v in vars(args).items() if k not in ("command", "extra") and v is not None
             for x in (f"--{k.replace('_', '-')}", str(v))]
    return shlex.join([*env, "dynlora", "compare", *given])


COMPARE_OWN = ("command", "extra", "profile", "methods", "seeds", "budgets")


def options_from_args(args: argparse.Namespace) -> CompareOptions:
    """CompareOptions from parsed ``dynlora compare`` flags: the profile's values, the train flags given over them."""
    given = {k: v for k, v in vars(args).items() if k not in COMPARE_OWN}
    instruct = is_instruct(given.get("task"), given.get("dataset"))
    presets = LM_PROFILES if instruct else PROFILES
    if args.profile not in presets:
        raise DynloraError(f"unknown profile {args.profile!r}; valid: {', '.join(presets)}")
    profile = presets[args.profile]
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    seeds = profile.seeds if args.seeds is None else parse_seeds(args.seeds)
    where = given.get("task") or (Path(given["dataset"]).stem if given.get("dataset") else "rt-polarity")
    output = given.pop("output_dir", None) or f"runs/compare-{args.profile}-{where}"
    return CompareOptions(values={**profile.values, **given}, methods=methods, seeds=seeds, output=output,
                          profile=args.profile, command=_command(args))


def run_from_args(args: argparse.Namespace) -> list[CompareRow]:
    """``dynlora compare``: parse the flags and run (``tools.sweep`` runs it with ``--budgets``)."""
    return run_compare(options_from_args(args))
