"""The ``dynlora`` command: ``train``, ``export``, ``compare``, ``report`` and ``generate``.

Bad input raises ``DynloraError``; ``main`` prints it as one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dynlora.errors import DynloraError

if TYPE_CHECKING:
    from dynlora.adaptive import AdaptiveConfig
    from dynlora.l1ra import L1RAConfig
    from dynlora.module_alloc import ModuleAllocConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"dynlora: error: {message}\n")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dynlora.recipes import method_names
    from dynlora.train import TrainOptions

    d = TrainOptions.__dataclass_fields__
    p = sub.add_parser("train", help="fine-tune with adapters and write a run folder")
    p.add_argument("--model", default=None, help="local HF model folder, hub name, or 'minilm' (default)")
    p.add_argument("--task", default=None, help="built-in task: rt-polarity (default), trec6; causal LM: chatterbot, "
                   "rt-polarity-instruct, trec6-instruct")
    p.add_argument("--dataset", default=None, help="local .csv/.jsonl file (or a HF datasets name when online)")
    p.add_argument("--text-column", default=d["text_column"].default)
    p.add_argument("--label-column", default=d["label_column"].default)
    p.add_argument("--method", default="lora", help=f"one of: {', '.join(method_names())}")
    p.add_argument("--rank", type=int, default=d["rank"].default)
    p.add_argument("--alpha", type=float, default=d["alpha"].default)
    p.add_argument("--dropout", type=float, default=d["dropout"].default)
    p.add_argument("--targets", default="all-linear", help="all-linear, comma-separated names, or a regex")
    p.add_argument("--epochs", type=float, default=d["epochs"].default)
    p.add_argument("--max-steps", type=int, default=d["max_steps"].default)
    p.add_argument("--train-size", type=int, default=d["train_size"].default,
                   help="training examples to use (seeded subset); 0 = the whole training split")
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default)
    p.add_argument("--lr", type=float, default=d["lr"].default)
    p.add_argument("--max-length", type=int, default=d["max_length"].default)
    p.add_argument("--seed", type=int, default=d["seed"].default)
    p.add_argument("--output", default=None, help="run folder (default runs/<timestamp>)")
    p.add_argument("--rank-budget", type=int, default=None,
                   help="total rank over all adapters, split evenly (default: rank x number of adapters)")
    p.add_argument("--save-every", type=float, default=d["save_every"].default,
                   help="checkpoint every N steps, or that fraction (< 1) of the run; 0 = never")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the unfinished (killed) run RUN from its last complete checkpoint, with the "
                        "options it was started with (other flags are ignored)")
    _add_l1ra(p)
    _add_module_alloc(p)
    _add_adaptive(p)


def _add_adaptive(p: argparse.ArgumentParser) -> None:
    from dynlora.adaptive import SCORES, AdaptiveConfig

    d = AdaptiveConfig.__dataclass_fields__
    g = p.add_argument_group("adaptive", "importance-driven rank reallocation + input gate (--method adaptive)")
    g.add_argument("--input-gate", action=argparse.BooleanOptionalAction, default=d["input_gate"].default,
                   help="per-token gate g(x) = sigmoid(w.x + b) on each adapter's output")
    g.add_argument("--importance", default=d["score"].default, help=" | ".join(SCORES))
    g.add_argument("--uncertainty", action="store_true", help="multiply sensitivity by its uncertainty (AdaLoRA)")
    g.add_argument("--realloc-interval", type=float, default=d["interval_ratio"].default,
                   help="steps between reallocations: a whole number, or a fraction (< 1) of the run")
    g.add_argument("--realloc-warmup", type=float, default=d["warmup_ratio"].default,
                   help="fraction of the run before the first reallocation")
    g.add_argument("--max-moves", type=float, default=d["max_moves_ratio"].default,
                   help="most ranks moved per event, as a fraction of the budget")


def adaptive_config(args: argparse.Namespace) -> AdaptiveConfig:
    """The ``AdaptiveConfig`` named by the adaptive flags (``--min-rank`` / ``--max-rank`` are shared)."""
    from dynlora.adaptive import AdaptiveConfig

    every = args.realloc_interval
    if not every > 0 or (every >= 1 and every != int(every)):
        raise DynloraError(f"--realloc-interval {every}: give a whole number of steps or a fraction below 1")
    return AdaptiveConfig(score=args.importance, uncertainty=args.uncertainty,
                          interval=int(every) if every >= 1 else None,
                          interval_ratio=every if every < 1 else AdaptiveConfig.interval_ratio,
                          warmup_ratio=args.realloc_warmup, min_rank=args.min_rank, max_rank=args.max_rank,
                          max_moves_ratio=args.max_moves, input_gate=args.input_gate)


def _add_module_alloc(p: argparse.ArgumentParser) -> None:
    from dynlora.module_alloc import ModuleAllocConfig

    d = ModuleAllocConfig.__dataclass_fields__
    g = p.add_argument_group("module-alloc", "train only the most important adapters (--method module-alloc)")
    g.add_argument("--score", default=d["score"].default, help="activation | gradient")
    g.add_argument("--strategy", default=d["strategy"].default, help="topk | topp | multinomial | discounted | uniform")
    g.add_argument("--schedule", default=d["schedule"].default,
                   help="once:N or every:N; N in steps, or a fraction below 1 of the run")
    g.add_argument("--k", type=float, default=d["k"].default, help="adapters that train: a count or a fraction")
    g.add_argument("--threshold", type=float, default=d["threshold"].default, help="cumulative share for topp")
    g.add_argument("--decay", type=float, default=None, help="EMA factor for the scores (default: accumulate)")
    g.add_argument("--warmup", type=int, default=d["warmup"].default, help="extra steps with every adapter active")


def module_alloc_config(args: argparse.Namespace) -> ModuleAllocConfig:
    """The ``ModuleAllocConfig`` named by the module-alloc flags."""
    from dynlora.module_alloc import ModuleAllocConfig

    return ModuleAllocConfig(score=args.score, strategy=args.strategy, schedule=args.schedule, k=args.k,
                             threshold=args.threshold, decay=args.decay, warmup=args.warmup)


def _add_l1ra(p: argparse.ArgumentParser) -> None:
    from dynlora.l1ra import L1RAConfig

    d = L1RAConfig.__dataclass_fields__
    g = p.add_argument_group("l1ra", "L1-regularised rank reallocation (--method l1ra)")
    g.add_argument("--l1ra-lambda", type=float, default=d["lam"].default, help="L1 strength on the gates")
    g.add_argument("--l1ra-lr", type=float, default=d["lr_c"].default, help="the gates' learning rate lr_c")
    g.add_argument("--l1ra-threshold", type=float, default=d["threshold"].default, help="prune gates under this")
    g.add_argument("--l1ra-interval", type=float, default=d["interval_ratio"].default,
                   help="steps between reallocations: an integer >= 1, or a fraction (< 1) of the run")
    g.add_argument("--min-rank", type=int, default=d["min_rank"].default)
    g.add_argument("--max-rank", type=int, default=None)


def l1ra_config(args: argparse.Namespace) -> L1RAConfig:
    """The ``L1RAConfig`` named by the ``--l1ra-*`` flags."""
    from dynlora.l1ra import L1RAConfig

    every = args.l1ra_interval
    if not every > 0 or (every >= 1 and every != int(every)):
        raise DynloraError(f"--l1ra-interval {every}: give a whole number of steps or a fraction below 1")
    return L1RAConfig(lam=args.l1ra_lambda, lr_c=args.l1ra_lr, threshold=args.l1ra_threshold,
                      interval=int(every) if every >= 1 else None,
                      interval_ratio=every if 0 < every < 1 else L1RAConfig.interval_ratio,
                      min_rank=args.min_rank, max_rank=args.max_rank)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a run's adapter out as a plain PEFT LoRA folder")
    p.add_argument("run", help="a run folder written by dynlora train")
    p.add_argument("--output", required=True, help="new folder for the PEFT adapter")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from dynlora.compare import add_arguments

    add_arguments(sub.add_parser("compare", help="train methods side by side on one task and rank budget"))


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with an exported causal-LM adapter (plain PEFT)")
    p.add_argument("--adapter", required=True, help="a PEFT adapter folder or a dynlora run folder")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--model", default=None, help="base model (default: the one the adapter names)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)


def _generate(args: argparse.Namespace) -> None:
    from dynlora.generate import GenerateOptions, generate

    opts = GenerateOptions(adapter=args.adapter, prompts=tuple(args.prompts), model=args.model,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    for prompt, reply in zip(opts.prompts, generate(opts, log=lambda m: print(m, file=sys.stderr))):
        print(reply if len(opts.prompts) == 1 else f">>> {prompt}\n{reply}\n")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="draw a run's rank heatmap, rank per module type over steps, gates")
    p.add_argument("run", help="a run folder written by dynlora train")


def _report(args: argparse.Namespace) -> None:
    from dynlora.report import gains_table, write_report

    files = write_report(args.run)
    print(gains_table(args.run))
    for path in files:
        print(f"dynlora: wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynlora", description="Dynamic LoRA fine-tuning that exports plain PEFT LoRA.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_train(sub)
    _add_export(sub)
    _add_compare(sub)
    _add_report(sub)
    _add_generate(sub)
    return parser


def _train(args: argparse.Namespace) -> None:
    from dynlora.inject import parse_targets
    from dynlora.run_folder import options_from_dict, stored_options
    from dynlora.train import TrainOptions, train

    if args.resume is not None:
        train(options_from_dict(TrainOptions, {**stored_options(args.resume), "output": args.resume}), resume=True)
        return
    opts = TrainOptions(
        model=args.model, task=args.task, dataset=args.dataset, text_column=args.text_column,
        label_column=args.label_column, method=args.method, rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, targets=parse_targets(args.targets), epochs=args.epochs, max_steps=args.max_steps,
        train_size=None if args.train_size == 0 else args.train_size, batch_size=args.batch_size, lr=args.lr,
        max_length=args.max_length, seed=args.seed, output=args.output, rank_budget=args.rank_budget,
        save_every=args.save_every,
        l1ra=l1ra_config(args), module_alloc=module_alloc_config(args), adaptive=adaptive_config(args))
    train(opts)


def _export(args: argparse.Namespace) -> None:
    import shutil
    from pathlib import Path

    from dynlora.train import RUN_MARKER

    run = Path(args.run)
    if not (run / RUN_MARKER).is_file() or not (run / "adapter").is_dir():
        raise DynloraError(f"{args.run!r} is not a dynlora run folder (needs {RUN_MARKER} and adapter/)")
    out = Path(args.output)
    if out.exists():
        raise DynloraError(f"output {args.output!r} already exists; give a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copytree(run / "adapter", tmp)
    tmp.rename(out)
    print(f"dynlora: PEFT adapter written to {out}")


def _compare(args: argparse.Namespace) -> None:
    from dynlora.compare import run_from_args

    run_from_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynlora`` command; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        {"train": _train, "export": _export, "compare": _compare, "report": _report,
         "generate": _generate}[args.command](args)
    except DynloraError as err:
        print(f"dynlora: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
