"""The ``dynlora`` command: ``train``, ``export``, ``compare``, ``report``, ``generate`` and ``serve``.

Bad input raises ``DynloraError``; ``main`` prints it as one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser

from dynlora.errors import DynloraError


class _Parser(HfArgumentParser):
    """argparse's own errors as one line and exit code 2; HfArgumentParser for the train command's dataclasses."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)  # HF's shows defaults; other commands say them
        super().__init__(**kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"dynlora: error: {message}\n")


def _add_train(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from dynlora.training.arguments import add_train_arguments

    p = sub.add_parser("train", help="fine-tune with adapters and write a run folder",
                       usage="dynlora train [CONFIG] [--flag VALUE ...]",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Every transformers.TrainingArguments flag works here under its usual name "
                                   "(--report_to tensorboard, --lr_scheduler_type cosine, ...); a YAML or JSON "
                                   "file takes the same keys (dynlora train run.yaml), and flags override it.")
    add_train_arguments(p)
    return p


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a run's adapter out as a plain PEFT LoRA folder")
    p.add_argument("run", help="a run folder written by dynlora train")
    p.add_argument("--output", required=True, help="new folder for the PEFT adapter")
    p.add_argument("--rank-pattern-only", action="store_true",
                   help="write only a peft LoraConfig of the ranks the run learned (rank_pattern, at the run's "
                        "alpha / rank scale), to train plain PEFT LoRA from scratch with them")
    p.add_argument("--merge", action="store_true",
                   help="write the base model with the adapter merged in (safetensors, the base's dtype, tokenizer "
                        "included): a plain transformers model folder for servers without LoRA support")
    p.add_argument("--pad-rank", type=int, default=None, metavar="R",
                   help="every module at rank R (zero-padded, its scale folded into B, one global "
                        "lora_alpha / r): for servers and engines that take one rank per adapter")


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


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start vLLM's OpenAI-compatible server with exported adapters (vllm needed)",
                       usage="dynlora serve ADAPTER_OR_RUN [...] [--flag VALUE ...] [-- VLLM_ARG ...]",
                       description="Every adapter is loaded at once, by the name of its run folder (or NAME=PATH); "
                                   "they must share one base. Arguments after -- go to vLLM as they are.")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER_OR_RUN",
                   help="a PEFT adapter folder or a dynlora run folder, optionally NAME=PATH")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter that has vllm (default: this one; make setup-serve builds "
                        ".venv-serve/bin/python)")
    p.add_argument("--model", default=None, help="base model (default: the one the adapters name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--dtype", default="base", choices=("base", "auto", "float32", "bfloat16", "float16"),
                   help="the served weights: base (the default: the base's own dtype, so a float32 base serves in "
                        "float32 as it trained), or vLLM's auto / float32 / bfloat16 / float16")
    p.add_argument("--dry-run", action="store_true", help="print the vLLM command and exit")


def _serve(args: argparse.Namespace) -> None:
    from dynlora.tools.serve import ServeOptions, serve

    serve(ServeOptions(adapters=tuple(args.adapters), python=args.python, model=args.model, host=args.host,
                       port=args.port, dtype=args.dtype, extra=tuple(args.extra)), dry_run=args.dry_run)


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
    parser.train_parser = _add_train(sub)  # a config file sets its defaults
    _add_export(sub)
    _add_compare(sub)
    _add_report(sub)
    _add_generate(sub)
    _add_serve(sub)
    return parser


def _train_values(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The train command's values: a config file's (when one is given) under the flags given."""
    from dynlora.training.arguments import read_config_file

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # serve: vLLM's own arguments
    argv = argv[:len(argv) - len(extra) - 1] if "--" in argv else argv
    args = parser.parse_args(argv)
    if extra and args.command != "serve":
        parser.error(f"arguments after -- ({shlex.join(extra)}) are only for dynlora serve")
    args.extra = extra
    if args.command == "train" and args.config is not None:
        train = parser.train_parser
        train.set_defaults(**read_config_file(args.config, train))
        args = parser.parse_args(argv)
    return args


def _train(args: argparse.Namespace) -> None:
    from dynlora.training.arguments import options_from
    from dynlora.training.options import TrainOptions
    from dynlora.training.pipeline import train
    from dynlora.training.run_folder import stored_options

    if args.resume is not None:
        train(TrainOptions.from_dict({**stored_options(args.resume), "output": args.resume}), resume=True)
        return
    train(options_from(vars(args)))


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
    out.parent.mkdir(parents=True, exist_ok=True)
    forms = [flag for flag, on in (("--merge", args.merge), ("--pad-rank", args.pad_rank is not None),
                                   ("--rank-pattern-only", args.rank_pattern_only)) if on]
    if len(forms) > 1:
        raise DynloraError(f"{' and '.join(forms)} are different export forms; give one of them")
    if args.merge:
        from dynlora.tools.merge import merge_run

        print(f"dynlora: merged model written to {merge_run(run, out)}")
        return
    if args.pad_rank is not None:
        from dynlora.io.pad_rank import pad_adapter

        print(f"dynlora: PEFT adapter at rank {args.pad_rank} everywhere written to "
              f"{pad_adapter(run / 'adapter', out, args.pad_rank)}")
        return
    if args.rank_pattern_only:
        from dynlora.io.rank_pattern import write_rank_pattern

        print(f"dynlora: LoraConfig of the learned ranks written to {write_rank_pattern(run, out)}")
        return
    from dynlora.io.model_card import serving_lines

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copytree(run / "adapter", tmp)
    tmp.rename(out)
    print(f"dynlora: PEFT adapter written to {out}")
    for line in serving_lines(run, out):
        print(f"dynlora: {line}")


def _compare(args: argparse.Namespace) -> None:
    if args.budgets is not None:
        from dynlora.tools.sweep import sweep_from_args

        sweep_from_args(args)
        return
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
    try:
        args = _train_values(parser, argv)
        if args.command is None:
            parser.print_help()
            return 2
        {"train": _train, "export": _export, "compare": _compare, "report": _report,
         "generate": _generate, "serve": _serve}[args.command](args)
    except DynloraError as err:
        print(f"dynlora: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
