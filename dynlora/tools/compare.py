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
import gc
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dynlora import __version__
from dynlora.core.inject import parse_targets
from dynlora.data.instruct import is_instruct
from dynlora.errors import DynloraError
from dynlora.hf.device import resolve_device
from dynlora.methods import registry
from dynlora.methods.base import TrainData
from dynlora.methods.config import knob_before, knobs, optional, type_of
from dynlora.tools.rows import CompareRow, make_row
from dynlora.tools.summary import cell_dir, draw_plots, summary_markdown
from dynlora.training.arguments import train_flag
from dynlora.training.options import TrainOptions
from dynlora.training.fit import fit_max_length
from dynlora.training.run_folder import resumable
from dynlora.training.pipeline import task_kind, train


@dataclass(frozen=True)
class Profile:
    """Training settings shared by every cell (a named preset; CLI flags override single values)."""

    name: str
    model: str | None = None
    train_size: int | None = 3000
    epochs: float = 1.0
    max_steps: int = -1
    rank: int = 8
    alpha: float = 16.0
    targets: str = "all-linear"
    batch_size: int = 16
    lr: float = 1e-3
    max_length: int = 64
    seeds: tuple[int, ...] = (0,)
    dtype: str | None = None  # the base weights (None: as transformers loads them)
    bf16: bool = False  # mixed precision
    quantize: str | None = None  # 4bit | 8bit bitsandbytes base (QLoRA)
    device: str | None = None  # auto | cpu | cuda (None: auto)
    budget_unit: str = "rank"  # what every method's budget is counted in: rank | params | flops
    eval_split: str = "test"  # the split every cell is scored on: test, or validation for a search


PROFILES: dict[str, Profile] = {
    # 2 CPU cores: 3000 snippets (as `dynlora train`), 1 epoch = 188 steps per cell. Measured for the three default
    # methods x 1 seed: 5.5 min wall (about 0.49 s/step + 15 s load/eval per cell, one torch thread on a
    # shared machine; 0.28 s/step with two idle threads), so later dynamic methods still fit in ~15 min.
    "quick": Profile("quick"),
    # a GPU: the whole rt-polarity train split (8,493), 3 epochs = 1,593 steps per cell, 3 seeds
    "full": Profile("full", train_size=None, epochs=3.0, seeds=(0, 1, 2)),
}
# causal-LM instruction tuning (chatterbot, *-instruct, prompt/response JSONL) on the embedded SmolLM2
LM_PROFILES: dict[str, Profile] = {
    # 2 CPU cores: SmolLM2-135M, 800 pairs, batch 8 x <= 64 tokens = 100 steps, about 5 min per cell
    "quick": Profile("quick", model="smollm2", train_size=800, batch_size=8, max_length=64),
    # a GPU: the whole training split, 3 epochs, longer sequences, 3 seeds
    "full": Profile("full", model="smollm2", train_size=None, epochs=3.0, max_length=128, seeds=(0, 1, 2)),
}


@dataclass(frozen=True)
class CompareOptions:
    """One compare invocation: a profile, the methods and seeds, the data and the output folder."""

    profile: Profile
    methods: tuple[str, ...] = field(default_factory=registry.compare_defaults)
    seeds: tuple[int, ...] = (0,)
    output: str = "runs/compare"
    task: str | None = None
    dataset: str | None = None
    text_column: str = "text"
    label_column: str = "label"
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
        if self.task is None and self.dataset is None:
            object.__setattr__(self, "task", "rt-polarity")
        self.cell_options(self.methods[0], self.seeds[0])  # checks the profile values

    def settings(self) -> dict[str, Any]:
        """What every cell shares; a folder made with other settings is not resumed."""
        shared = {k: v for k, v in dataclasses.asdict(self.profile).items() if k not in ("name", "seeds")}
        if shared["budget_unit"] == "rank":  # as folders from before budget units recorded it: not at all
            del shared["budget_unit"]
        if shared["eval_split"] == "test":  # likewise
            del shared["eval_split"]
        return {"task": self.task, "dataset": self.dataset, "text_column": self.text_column,
                "label_column": self.label_column, "profile": self.profile.name, **shared,
                # every method's default config: cells of any method may join the folder later
                "method_configs": {spec.name: dataclasses.asdict(spec.make_config())
                                   for spec in registry.specs() if spec.config is not None}}

    def cell_options(self, method: str, seed: int) -> TrainOptions:
        p = self.profile
        name, own = split_method(method)
        return TrainOptions(model=p.model, task=self.task, dataset=self.dataset, text_column=self.text_column,
                            label_column=self.label_column, method=name, rank=p.rank, alpha=p.alpha,
                            targets=parse_targets(p.targets), epochs=p.epochs, max_steps=p.max_steps,
                            train_size=p.train_size, batch_size=p.batch_size, lr=own.get("lr", p.lr),
                            method_config={k: v for k, v in own.items() if k != "lr"} or None,
                            max_length=p.max_length, seed=seed, output=str(cell_dir(Path(self.output), method, seed)),
                            dtype=p.dtype, bf16=p.bf16, quantize=p.quantize, device=p.device or "auto",
                            budget_unit=p.budget_unit, eval_split=p.eval_split)


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
        own[key] = _knob_value(fields[key], value, item, spec)
    if len(own) > ("lr" in own):
        registry.resolve_config(name, {k: v for k, v in own.items() if k != "lr"})  # a bad value is named here
    return name, own


def _knob_value(f: dataclasses.Field, text: str, item: str, spec: str) -> Any:
    if text.lower() == "none" and optional(f):  # a choice named "none" stays a string
        return None
    kind = type_of(f)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise DynloraError(f"method option {item!r} in {spec!r}: {f.name} must be {kind.__name__}") from None


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
    stored = json.loads(meta.read_text()).get("settings", {})
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
        model, examples, data = _fresh_model(first, with_data=registry.get(cell.method).reads_data)
        budgets[method] = prepare(model, cell, total_optimizer_steps(first, examples), data).budget
    gc.collect()
    return budgets


def _fresh_model(opts: TrainOptions, with_data: bool = False) -> tuple[torch.nn.Module, int, TrainData | None]:
    """(a freshly loaded base model, the number of training examples, and ``with_data`` the training split as a
    method that initialises from it reads it) for one cell's options."""
    if is_instruct(opts.task, opts.dataset):
        from dynlora.data.instruct import load_instruct
        from dynlora.hf.models import load_causal_lm

        data = load_instruct(opts.dataset or opts.task, opts.train_size, opts.seed)
        model, tokenizer = load_causal_lm(opts.model, log=tqdm.write)
    else:
        from dynlora.data.text import load_task
        from dynlora.hf.models import load_classifier

        data = load_task(opts.task, opts.dataset, text_column=opts.text_column, label_column=opts.label_column,
                         train_size=opts.train_size, seed=opts.seed)
        model, tokenizer = load_classifier(opts.model, data.num_labels)
    if not with_data:
        return model, len(data.train), None
    kind = task_kind(opts)  # the training pipeline's own split and collator
    train_ds = kind.split(data, "train", tokenizer, fit_max_length(opts.max_length, model, tqdm.write))
    return model, len(data.train), TrainData(train_ds, kind.collator(tokenizer), opts.batch_size, opts.seed)


def run_compare(opts: CompareOptions) -> list[CompareRow]:
    """Train every missing (method, seed) cell, then write summary.md, meta.json and the plots."""
    root = Path(opts.output)
    settings = opts.settings()
    check_settings(root, settings)
    root.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    meta = {"command": opts.command, "date": started, "machine": machine(opts.profile.device or "auto"),
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
        check_budgets(budgets, opts.profile.budget_unit)
    bar = tqdm(todo, desc="compare", unit="cell", position=0, dynamic_ncols=True, disable=not todo)
    for i, (method, seed) in enumerate(bar, 1):
        bar.set_description(f"compare {method} seed {seed} ({i}/{len(todo)})")
        cell = opts.cell_options(method, seed)
        metrics = train(cell, log=tqdm.write, resume=unfinished_cell(cell))
        check_budgets({**budgets, method: metrics["budget"]}, opts.profile.budget_unit)
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


def unfinished_cell(cell: TrainOptions) -> bool:
    """Whether ``cell`` goes on from a killed invocation's unfinished run (its options, a complete checkpoint).

    A cell killed before its first checkpoint, or started with other options, is started again: the compare owns
    its cells' folders, and a re-run resumes."""
    return resumable(cell.output, cell.as_dict())


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DynloraError(f"seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``dynlora compare`` flags; profile values apply where a flag is not given."""
    p.add_argument("--profile", default="quick", help=f"preset: {', '.join(PROFILES)} (default quick)")
    p.add_argument("--methods", default=",".join(registry.compare_defaults()),
                   help=f"comma-separated: {', '.join(registry.names())}")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    for flag, name in (("task", "task"), ("dataset", "dataset"), ("text-column", "text_column"),
                       ("label-column", "label_column")):  # the data, as dynlora train takes it
        p.add_argument(f"--{flag}", default=TrainOptions.__dataclass_fields__[name].default, **train_flag(name))
    p.add_argument("--output", default=None, help="compare folder (default runs/compare-<profile>-<task>)")
    # what the profile sets: dynlora train's flags under their short names; given, they override the profile
    for flag, name, kind in (("model", "model", str), ("train-size", "train_size", int),
                             ("epochs", "num_train_epochs", float), ("max-steps", "max_steps", int),
                             ("rank", "rank", int), ("alpha", "alpha", float), ("targets", "targets", str),
                             ("batch-size", "per_device_train_batch_size", int), ("lr", "learning_rate", float),
                             ("max-length", "max_length", int), ("dtype", "dtype", str), ("device", "device", str)):
        spec = train_flag(name)
        p.add_argument(f"--{flag}", type=kind, default=None, choices=spec.get("choices"),
                       help=f"{spec['help']}; overrides the profile")
    p.add_argument("--bf16", action="store_const", const=True, default=None, help=train_flag("bf16")["help"])
    p.add_argument("--load-in-4bit", dest="quantize", action="store_const", const="4bit", default=None,
                   help=train_flag("load_in_4bit")["help"])
    p.add_argument("--load-in-8bit", dest="quantize", action="store_const", const="8bit",
                   help=train_flag("load_in_8bit")["help"])
    p.add_argument("--budgets", default=None,
                   help="a budget sweep: comma-separated average ranks per module (1,2,4,8), each an ordinary "
                        "compare in OUTPUT/budget-<b>, then sweep.md and Pareto plots over all of them")
    for flag, name in (("budget-unit", "budget_unit"), ("eval-split", "eval_split")):
        p.add_argument(f"--{flag}", default=None, **train_flag(name))  # cells whose budgets differ are refused


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (rebuilt from ``args`` when called in-process), with thread settings."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ]
    if sys.argv[1:2] == ["compare"]:
        return shlex.join([*env, "dynlora", *sys.argv[1:]])
    given = [x for k, v in vars(args).items() if k != "command" and v is not None
             for x in (f"--{k.replace('_', '-')}", str(v))]
    return shlex.join([*env, "dynlora", "compare", *given])


def options_from_args(args: argparse.Namespace) -> CompareOptions:
    """CompareOptions from parsed ``dynlora compare`` flags."""
    if args.profile not in PROFILES:
        raise DynloraError(f"unknown profile {args.profile!r}; valid: {', '.join(PROFILES)}")
    names = {f.name for f in dataclasses.fields(Profile)}
    overrides = {k: v for k, v in vars(args).items() if k in names - {"name", "seeds"} and v is not None}
    if overrides.get("train_size") == 0:
        overrides["train_size"] = None
    presets = LM_PROFILES if is_instruct(args.task, args.dataset) else PROFILES
    profile = dataclasses.replace(presets[args.profile], **overrides)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    seeds = profile.seeds if args.seeds is None else parse_seeds(args.seeds)
    where = args.task or (Path(args.dataset).stem if args.dataset else "rt-polarity")
    return CompareOptions(profile=profile, methods=methods, seeds=seeds, task=args.task, dataset=args.dataset,
                          text_column=args.text_column, label_column=args.label_column, command=_command(args),
                          output=args.output or f"runs/compare-{args.profile}-{where}")


def run_from_args(args: argparse.Namespace) -> list[CompareRow]:
    """``dynlora compare``: parse the flags and run (``tools.sweep`` runs it with ``--budgets``)."""
    return run_compare(options_from_args(args))
