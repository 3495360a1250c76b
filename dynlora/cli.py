"""The ``dynlora`` command: ``train``, ``export``, ``compare``, ``report``, ``generate`` and ``serve``.

Bad input raises ``DynloraError``; ``main`` prints it as one line on stderr and exits with code 2.

The command answers ``--help`` and a bad flag without importing torch, transformers or peft: only the
command given gets its flags, and ``train`` / ``compare`` (whose flags come from those libraries) take
them from a cached snapshot (``parser_snapshot``) until the flags parse; then the real parser, with the
real types, parses them again. Dependencies' output is held from the first import on and goes to the
run's log (``training.run_log``), never to the terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dynlora import parser_snapshot
from dynlora.errors import DynloraError
from dynlora.training.run_log import hold_output, run_log


class _Parser(argparse.ArgumentParser):
    """argparse's own errors as one line and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"dynlora: error: {message}\n")


def _add_train(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("train", help="fine-tune with adapters and write a run folder",
                          usage="dynlora train [CONFIG] [--flag VALUE ...]",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          description="Every transformers.TrainingArguments flag works here under its usual name "
                                      "(--report_to tensorboard, --lr_scheduler_type cosine, ...); a YAML or JSON "
                                      "file takes the same keys (dynlora train run.yaml), and flags override it.")


def _train_flags(p: argparse.ArgumentParser) -> None:
    from dynlora.training.arguments import add_train_arguments

    add_train_arguments(p)


def _add_export(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return p


def _add_compare(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("compare", help="train methods side by side on one task and rank budget")


def _compare_flags(p: argparse.ArgumentParser) -> None:
    from dynlora.tools.compare import add_arguments

    add_arguments(p)


def _add_generate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="answer prompts with an exported causal-LM adapter (plain PEFT)")
    p.add_argument("--adapter", required=True, help="a PEFT adapter folder or a dynlora run folder")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--model", default=None, help="base model (default: the one the adapter names)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    return p


def _generate(args: argparse.Namespace) -> None:
    from dynlora.tools.generate import GenerateOptions, generate

    opts = GenerateOptions(adapter=args.adapter, prompts=tuple(args.prompts), model=args.model,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    for prompt, reply in zip(opts.prompts, generate(opts, log=lambda m: print(m, file=sys.stderr))):
        print(reply if len(opts.prompts) == 1 else f">>> {prompt}\n{reply}\n")


def _add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return p


def _serve(args: argparse.Namespace) -> None:
    from dynlora.tools.serve import ServeOptions, serve

    serve(ServeOptions(adapters=tuple(args.adapters), python=args.python, model=args.model, host=args.host,
                       port=args.port, dtype=args.dtype, extra=tuple(args.extra)), dry_run=args.dry_run)


def _add_report(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="draw a run's rank heatmap, rank per module type over steps, gates")
    p.add_argument("run", help="a run folder written by dynlora train")
    return p


def _report(args: argparse.Namespace) -> None:
    from dynlora.report.run_report import gains_table, write_report

    files = write_report(args.run)
    print(gains_table(args.run))
    for path in files:
        print(f"dynlora: wrote {path}")


# each command's parser (with the flags that cost nothing to define), and the flags defined by importing libraries
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = {
    "train": _add_train, "export": _add_export, "compare": _add_compare, "report": _add_report,
    "generate": _add_generate, "serve": _add_serve}
HEAVY_FLAGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"train": _train_flags, "compare": _compare_flags}


def _command_of(argv: Sequence[str]) -> str | None:
    return argv[0] if argv and argv[0] in COMMANDS else None  # the top-level parser has no option but --help


def build_parser(command: str | None = "", *, snapshot: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The ``dynlora`` parser: every command with its own flags, and the flags that libraries define
    (``HEAVY_FLAGS``) for ``command`` only ("": for all of them), from ``snapshot`` when one is given."""
    parser = _Parser(prog="dynlora", description="Dynamic LoRA fine-tuning that exports plain PEFT LoRA.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, add in COMMANDS.items():
        p = add(sub)
        if name in HEAVY_FLAGS and command in ("", name):
            if snapshot is not None:
                parser_snapshot.restore(snapshot, p)
            else:
                HEAVY_FLAGS[name](p)
        if name == "train":
            parser.train_parser = p  # a config file sets its defaults
    return parser


def _snapshot_parser(command: str) -> argparse.ArgumentParser | None:
    """A parser for ``command`` that imports no library (its flags from the cached snapshot); None: no snapshot yet."""
    data = parser_snapshot.load(command, parser_snapshot.fingerprint())
    return build_parser(command, snapshot=data) if data is not None else None


def _snapshots_apply(command: str | None) -> bool:
    """Whether a snapshot may stand in for ``command``'s parser: a command whose real parser costs imports, the
    cache not turned off, and a process that has not loaded the methods (it may have registered one at run
    time, which no snapshot knows)."""
    return (command in HEAVY_FLAGS and os.environ.get("DYNLORA_PARSER_CACHE", "1") != "0"
            and "dynlora.methods.registry" not in sys.modules)


def cache_parser(command: str, real: argparse.ArgumentParser | None = None) -> bool:
    """Cache the snapshot of ``command``'s real parser (``real``, the whole ``dynlora`` parser, or built here)
    for the calls after this one; False if it cannot stand in for the real one or cannot be written."""
    real = real or build_parser(command)
    return parser_snapshot.save(command, parser_snapshot.fingerprint(), subparser(real, command),
                                subparser(build_parser(None), command))


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` inside the ``dynlora`` parser."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed; what follows ``--`` is vLLM's (serve only)."""
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:len(argv) - len(extra) - 1] if "--" in argv else argv)
    if extra and args.command != "serve":
        parser.error(f"arguments after -- ({shlex.join(extra)}) are only for dynlora serve")
    args.extra = extra
    return args


def _values(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command's values; for train, a config file's (when one is given) under the flags given."""
    args = _parse(parser, argv)
    if args.command == "train" and args.config is not None:
        from dynlora.training.arguments import read_config_file

        train = parser.train_parser
        train.set_defaults(**read_config_file(args.config, train))
        args = _parse(parser, argv)
    return args


def _train(args: argparse.Namespace) -> None:
    from dynlora.training.arguments import recorded_config, run_config
    from dynlora.training.pipeline import train
    from dynlora.training.run_folder import stored_options

    if args.resume is not None:
        recorded = recorded_config(stored_options(args.resume))
        train(dataclasses.replace(recorded, trainer=dataclasses.replace(recorded.trainer, output_dir=args.resume)),
              resume=True)
        return
    train(run_config(vars(args)))


def _export(args: argparse.Namespace) -> None:
    import shutil

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


def _log_of(folder: str | None) -> Path | None:
    """A run folder's ``train.log`` (what a command does to a run is logged with it); None for other folders."""
    log = Path(folder) / "train.log" if folder else None
    return log if log is not None and log.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynlora`` command; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    with hold_output():  # from the first import on: some dependencies log as they are imported
        try:
            cached = _snapshots_apply(command)  # decided before this call imports the methods
            fast = _snapshot_parser(command) if cached else None
            if fast is not None:
                _parse(fast, argv)  # --help, or a bad flag refused as the real parser would, before any import
            parser = build_parser(command)
            if cached and fast is None:  # this call paid for the real parser; the ones after it will not
                cache_parser(command, parser)
            args = _values(parser, argv)
            if args.command is None:
                parser.print_help()
                return 2
            folder = {"export": "run", "report": "run", "generate": "adapter"}.get(args.command)
            log = _log_of(getattr(args, folder)) if folder else None
            with run_log(log) if log is not None else nullcontext():  # else held, and dropped at the end
                {"train": _train, "export": _export, "compare": _compare, "report": _report,
                 "generate": _generate, "serve": _serve}[args.command](args)
        except DynloraError as err:
            print(f"dynlora: error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
