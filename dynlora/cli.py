"""The ``dynlora`` command: ``train``, ``export``, ``compare``, ``report`` and ``generate``.

Bad input raises ``DynloraError``; ``main`` prints it as one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from dynlora.errors import DynloraError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"dynlora: error: {message}\n")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dynlora.hf.device import DEVICES
    from dynlora.hf.models import DTYPES
    from dynlora.io.adapter_file import EXPORT_DTYPES
    from dynlora.methods import registry
    from dynlora.training.options import TrainOptions

    d = TrainOptions.__dataclass_fields__
    p = sub.add_parser("train", help="fine-tune with adapters and write a run folder")
    p.add_argument("--model", default=None, help="local HF model folder, hub name, or 'minilm' (default)")
    p.add_argument("--task", default=None, help="built-in task: rt-polarity (default), trec6; causal LM: chatterbot, "
                   "rt-polarity-instruct, trec6-instruct")
    p.add_argument("--dataset", default=None, help="local .csv/.jsonl file (or a HF datasets name when online)")
    p.add_argument("--text-column", default=d["text_column"].default,
                   help="the text column of a --dataset file (default: text)")
    p.add_argument("--label-column", default=d["label_column"].default,
                   help="the label column of a --dataset file (default: label)")
    p.add_argument("--method", default=registry.default_method(),
                   help=f"one of: {', '.join(registry.names())} (name:variant where a method takes one)")
    p.add_argument("--rank", type=int, default=d["rank"].default, help="LoRA rank r of every adapter (default 8)")
    p.add_argument("--alpha", type=float, default=d["alpha"].default,
                   help="LoRA alpha; the update is scaled by alpha / r (default 16)")
    p.add_argument("--dropout", type=float, default=d["dropout"].default,
                   help="dropout on the adapters' input (default 0)")
    p.add_argument("--targets", default="all-linear", help="all-linear, comma-separated names, or a regex")
    p.add_argument("--epochs", type=float, default=d["epochs"].default,
                   help="passes over the training split (default 1)")
    p.add_argument("--max-steps", type=int, default=d["max_steps"].default,
                   help="optimizer steps; overrides --epochs (default -1: from the epochs)")
    p.add_argument("--train-size", type=int, default=d["train_size"].default,
                   help="training examples to use (seeded subset); 0 = the whole training split")
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default,
                   help="examples per micro-batch and process (default 16)")
    p.add_argument("--lr", type=float, default=d["lr"].default,
                   help="peak learning rate, linear warm-up then decay (default 1e-3)")
    p.add_argument("--max-length", type=int, default=d["max_length"].default,
                   help="tokens per example, longer ones truncated (default 64)")
    p.add_argument("--seed", type=int, default=d["seed"].default,
                   help="seed of the data order, initialisation and the methods' draws (default 0)")
    p.add_argument("--output", default=None, help="run folder (default runs/<timestamp>)")
    p.add_argument("--rank-budget", type=int, default=None,
                   help="total rank over all adapters, split evenly (default: rank x number of adapters)")
    p.add_argument("--save-every", type=float, default=d["save_every"].default,
                   help="checkpoint every N steps, or that fraction (< 1) of the run; 0 = never")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="the base model's weights (default: as transformers loads them)")
    p.add_argument("--adapter-dtype", default=d["adapter_dtype"].default,
                   help="the adapters' weights: float32 (masters, default), bfloat16, float16, or base")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (autocast) through the Trainer")
    p.add_argument("--fp16", action="store_true", help="fp16 mixed precision (autocast, loss scaling)")
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"].default,
                   help="micro-batches per optimizer step (the methods act once per optimizer step)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block in backward (non-reentrant): less activation memory")
    p.add_argument("--load-in-4bit", dest="quantize", action="store_const", const="4bit", default=None,
                   help="a 4-bit nf4 base (QLoRA; double quantisation, computing in --dtype, bfloat16 by default)")
    p.add_argument("--load-in-8bit", dest="quantize", action="store_const", const="8bit",
                   help="an 8-bit (LLM.int8) base")
    p.add_argument("--export-dtype", default=d["export_dtype"].default, choices=EXPORT_DTYPES,
                   help="the exported PEFT adapter's weights: base (each base layer's compute dtype: bf16 for a bf16 "
                        "or 4-bit base; default), float32 (the masters, exact), bfloat16, float16")
    p.add_argument("--device", default=d["device"].default, choices=DEVICES,
                   help="where to train: auto (CUDA when there is one; default), cpu, cuda "
                        "(pick a GPU with CUDA_VISIBLE_DEVICES)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the unfinished (killed) run RUN from its last complete checkpoint, with the "
                        "options it was started with (other flags are ignored)")
    add_method_flags(p)


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """One argument group per registered method with a config, its flags made from the config's knobs.

    A flag several methods share (``--min-rank``) is added once; every method that has it reads it.
    """
    from dynlora.methods import registry
    from dynlora.methods.config import flag_of, knobs, type_of

    seen: set[str] = set()
    for spec in registry.specs():
        if spec.config is None:
            continue
        group = p.add_argument_group(spec.name, f"{spec.help} (--method {spec.name})")
        for f, meta in knobs(spec.config):
            flag = flag_of(f)
            if flag in seen:
                continue
            seen.add(flag)
            kind = type_of(f)
            if kind is bool:
                group.add_argument(flag, dest=_dest(flag), action=argparse.BooleanOptionalAction, default=f.default,
                                   help=meta["help"])
            else:
                group.add_argument(flag, dest=_dest(flag), type=kind, default=f.default, help=meta["help"],
                                   metavar=f.name.upper())


def _dest(flag: str) -> str:
    return "method_" + flag.lstrip("-").replace("-", "_")


def method_config(args: argparse.Namespace) -> object:
    """The chosen method's config from its flags (``TrainOptions`` then applies a ``name:variant``)."""
    from dynlora.methods import registry
    from dynlora.methods.config import flag_of, knobs

    spec = registry.get(args.method)
    if spec.config is None:
        return None
    values = {f.name: getattr(args, _dest(flag_of(f))) for f, _ in knobs(spec.config)}
    return spec.make_config(**values)  # TrainOptions applies a name:variant


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a run's adapter out as a plain PEFT LoRA folder")
    p.add_argument("run", help="a run folder written by dynlora train")
    p.add_argument("--output", required=True, help="new folder for the PEFT adapter")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from dynlora.tools.compare import add_arguments

    add_arguments(sub.add_parser("compare", help="train methods side by side on one task and rank budget"))


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with an exported causal-LM adapter (plain PEFT)")
    p.add_argument("--adapter", required=True, help="a PEFT adapter folder or a dynlora run folder")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--model", default=None, help="base model (default: the one the adapter names)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")


def _generate(args: argparse.Namespace) -> None:
    from dynlora.tools.generate import GenerateOptions, generate

    opts = GenerateOptions(adapter=args.adapter, prompts=tuple(args.prompts), model=args.model,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    for prompt, reply in zip(opts.prompts, generate(opts, log=lambda m: print(m, file=sys.stderr))):
        print(reply if len(opts.prompts) == 1 else f">>> {prompt}\n{reply}\n")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="draw a run's rank heatmap, rank per module type over steps, gates")
    p.add_argument("run", help="a run folder written by dynlora train")


def _report(args: argparse.Namespace) -> None:
    from dynlora.report.run_report import gains_table, write_report

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
    from dynlora.core.inject import parse_targets
    from dynlora.training.options import TrainOptions
    from dynlora.training.pipeline import train
    from dynlora.training.run_folder import stored_options

    if args.resume is not None:
        train(TrainOptions.from_dict({**stored_options(args.resume), "output": args.resume}), resume=True)
        return
    opts = TrainOptions(
        model=args.model, task=args.task, dataset=args.dataset, text_column=args.text_column,
        label_column=args.label_column, method=args.method, rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, targets=parse_targets(args.targets), epochs=args.epochs, max_steps=args.max_steps,
        train_size=None if args.train_size == 0 else args.train_size, batch_size=args.batch_size, lr=args.lr,
        max_length=args.max_length, seed=args.seed, output=args.output, rank_budget=args.rank_budget,
        save_every=args.save_every, dtype=args.dtype, adapter_dtype=args.adapter_dtype, bf16=args.bf16,
        fp16=args.fp16, grad_accum=args.grad_accum, gradient_checkpointing=args.gradient_checkpointing,
        quantize=args.quantize, device=args.device, export_dtype=args.export_dtype,
        method_config=method_config(args))
    train(opts)


def _export(args: argparse.Namespace) -> None:
    import shutil
    from pathlib import Path

    from dynlora.training.run_folder import RUN_MARKER

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
    from dynlora.tools.compare import run_from_args

    run_from_args(args)


QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def quiet_imports() -> None:
    """Keep stderr for dynlora's one-line errors: on a CPU with AVX512-BF16, bitsandbytes (which peft
    imports) warns on import that an optional speed-up kernel from the hub cannot be loaded."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynlora`` command; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_imports()
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
