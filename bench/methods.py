"""Step time and memory of every method against PEFT LoRA, side by side in one process.

Each method's model is built the way ``dynlora train`` builds it (the same loader, ``prepare`` with the
method's controller, the method's parameter groups), then timed blocks of optimizer steps rotate over the
models (forward order one round, reverse order the next) on one fixed batch, so machine noise hits all
alike. A step is forward (under autocast with ``--bf16``), backward, ``optimizer.step()``, the controller's
step (trackers, per-step hooks, and at its scheduled steps the method's decisions and resizes) and
``zero_grad``. The methods' rank changes happen during the timed blocks, as in training.

Memory, per model: the weights (every parameter and buffer storage, quantized ones as stored), the
gradients and optimizer state, and the bytes autograd saved for backward in one step; their sum is the
counted peak. On CUDA also the allocator's peak during one step above what was resident before it, plus
the model's own resident weights and optimizer state (``torch.cuda.max_memory_allocated``).

On CUDA ``--sync-check N`` then runs N more steps per method with ``torch.cuda.set_sync_debug_mode``:
the controller's step on steps without a scheduled event under ``"error"`` (any host sync raises), and
the whole step under ``"warn"``, counting the warnings raised from dynlora's own files.

    python bench/methods.py --output bench/results/methods-bf16 --bf16 [--methods peft-lora,lora,...]
        [--model minilm | FOLDER] [--random-from CONFIG.json] [--dtype bfloat16] [--load-in-4bit]
        [--rounds 8] [--steps 5] [--batch-size 16] [--seq-len 64] [--sync-check 0]

``--random-from`` builds a randomly initialised model from a ``config.json`` first (saved to a temporary
folder, then loaded like any model): the shape of a model whose weights cannot be brought along.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from dynlora.hf.device import resolve_device
from dynlora.hf.memory import SavedTensorBytes, training_state_bytes
from dynlora.hf.models import load_classifier, pretrained_kwargs, quiet_loading, resolve_model
from dynlora.tools.compare import split_method
from dynlora.training.arguments import run_config
from dynlora.training.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = "peft-lora,lora,l1ra,adaptive,module-alloc"


@dataclass
class Cell:
    """One method's model, optimizer, controller and measurements."""

    method: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    controller: Any
    times: list[float] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)


def is_causal_lm(folder: str) -> bool:
    config = json.loads((Path(folder) / "config.json").read_text())
    return any(a.endswith("ForCausalLM") for a in config.get("architectures", []))


def random_model(config_file: Path, where: Path) -> str:
    """A model folder with random weights (seed 0) from ``config_file``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_file)
    if not any(a.endswith("ForCausalLM") for a in config.architectures or []):
        raise SystemExit(f"--random-from {config_file}: a causal LM config is needed (its batch is random token ids)")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(where)
    return str(where)


def make_batch(folder: str, lm: bool, batch_size: int, seq_len: int, vocab: int, device: str) -> dict[str, torch.Tensor]:
    """rt-polarity snippets for a classifier; random token ids (seed 0) for a causal LM, labels = inputs."""
    if lm:
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    else:
        from transformers import AutoTokenizer

        from dynlora.data.text import load_task

        tokenizer = AutoTokenizer.from_pretrained(folder)
        examples = load_task("rt-polarity").train[:batch_size]
        batch = dict(tokenizer([ex.text for ex in examples], padding="max_length", truncation=True,
                               max_length=seq_len, return_tensors="pt"))
        batch["labels"] = torch.tensor([ex.label for ex in examples])
    return {k: v.to(device) for k, v in batch.items()}


def build(method: str, folder: str, lm: bool, args: argparse.Namespace, total_steps: int) -> Cell:
    """The model for ``method`` as ``dynlora train`` prepares it, with its optimizer."""
    torch.manual_seed(0)
    name, own = split_method(method)  # a method's own knobs: module-alloc@fold=true
    opts = run_config({"model": folder, "method": name, "rank": args.rank, "alpha": 2.0 * args.rank,
                       "method_config": {k: v for k, v in own.items() if k != "lr"} or None, "dtype": args.dtype,
                       "bf16": args.bf16, "load_in_4bit": args.quantize == "4bit",
                       "load_in_8bit": args.quantize == "8bit", "train_on": args.device, "max_steps": total_steps})
    if lm:  # as load_causal_lm loads it, without needing a tokenizer (random token ids)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, **pretrained_kwargs(args.dtype, args.quantize, args.device))
    else:
        model, _ = load_classifier(folder, 2, args.dtype, args.quantize, args.device)
    if not args.quantize:
        model.to(resolve_device(args.device))
    prepared = prepare(model, opts, total_steps)
    groups = prepared.param_groups or [{"params": [p for p in prepared.model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    if prepared.controller is not None:
        prepared.controller.optimizer = optimizer
    prepared.model.train()
    return Cell(method, prepared.model, optimizer, prepared.controller)


def autocast(args: argparse.Namespace, device: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()


def one_step(cell: Cell, batch: dict[str, torch.Tensor], args: argparse.Namespace, device: str) -> None:
    with autocast(args, device):
        loss = cell.model(**batch).loss
    loss.backward()
    cell.optimizer.step()
    if cell.controller is not None:
        cell.controller.step()
    cell.optimizer.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(cell: Cell, batch: dict[str, torch.Tensor], args: argparse.Namespace, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step(cell, batch, args, device)
    sync(device)
    return (time.perf_counter() - start) / args.steps


def storage_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage (quantized weights as stored)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure_memory(cell: Cell, batch: dict[str, torch.Tensor], args: argparse.Namespace, device: str) -> dict[str, float]:
    with SavedTensorBytes(cell.model) as saved, autocast(args, device):
        loss = cell.model(**batch).loss
    loss.backward()
    cell.optimizer.step()
    state = training_state_bytes(cell.model, cell.optimizer)
    cell.optimizer.zero_grad(set_to_none=True)
    weights = storage_bytes(cell.model)
    mb = 2**20
    out = {"weights_mb": weights / mb, "grads_optimizer_mb": state / mb, "activations_mb": saved.bytes / mb,
           "counted_peak_mb": (weights + state + saved.bytes) / mb}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        one_step(cell, batch, args, device)
        torch.cuda.synchronize()
        above = torch.cuda.max_memory_allocated() - before
        resident = weights + sum(v.numel() * v.element_size() for s in cell.optimizer.state.values()
                                 for v in s.values() if torch.is_tensor(v) and v.is_cuda)
        out["cuda_peak_mb"] = (resident + above) / mb
    return out


def sync_check(cell: Cell, batch: dict[str, torch.Tensor], args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """Host syncs on steps without an event: the controller's step under "error", the step under "warn"."""
    ours = Path(__file__).resolve().parents[1] / "dynlora"
    schedule = getattr(getattr(cell.controller, "method", None), "schedule", None)
    quiet, warned, raised, events = 0, [], [], 0
    for _ in range(steps):
        upcoming = cell.controller.global_step + 1 if cell.controller is not None else 0
        if schedule is not None and schedule.fires(upcoming):
            events += 1
            one_step(cell, batch, args, "cuda")
            continue
        quiet += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with autocast(args, "cuda"):
                    loss = cell.model(**batch).loss
                loss.backward()
                cell.optimizer.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        warned += [f"{Path(w.filename).name}:{w.lineno}" for w in caught
                   if "synchroniz" in str(w.message) and str(ours) in str(Path(w.filename).resolve())]
        if cell.controller is not None:
            torch.cuda.set_sync_debug_mode("error")
            try:
                cell.controller.step()
            except RuntimeError as err:
                raised.append(str(err).splitlines()[0])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        cell.optimizer.zero_grad(set_to_none=True)
    return {"quiet_steps": quiet, "event_steps": events, "controller_syncs": raised,
            "forward_backward_syncs_in_dynlora": sorted(set(warned))}


def machine(device: str) -> dict[str, Any]:
    import peft
    import transformers

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}


def summary(result: dict[str, Any]) -> str:
    """The folder's summary.md: the command, the machine, one table of ratios to the first method."""
    m, cells, base = result["machine"], result["cells"], result["methods"][0]
    b = cells[base]
    cuda = "cuda_peak_mb" in b["memory"]
    head = ["method", "step ms (median)", "step × " + base, "counted peak MB", "peak × " + base,
            "weights MB", "grads+optim MB", "activations MB", "activation × " + base]
    if cuda:
        head += ["CUDA peak MB", "CUDA peak × " + base]
    lines = [f"# methods side by side: {result['model_name']}, {result['precision']}", "",
             f"- command: `{result['command']}`",
             f"- machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} (threads: {m['torch_threads']}), "
             f"transformers {m['transformers']}, peft {m['peft']}, device {m['device']}",
             f"- date: {result['date']}",
             f"- batch {result['batch_size']} x {result['seq_len']} tokens, rank {result['rank']}, all-linear; "
             f"{result['rounds']} rotating rounds x {result['steps']} steps per method after {result['warmup']} "
             f"warm-up steps ({result['total_steps']} steps per model, the methods' schedules included)", "",
             "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name in result["methods"]:
        c, mem = cells[name], cells[name]["memory"]
        row = [name, f"{c['step_ms_median']:.1f}", f"{c['step_ms_median'] / b['step_ms_median']:.3f}",
               f"{mem['counted_peak_mb']:.1f}", f"{mem['counted_peak_mb'] / b['memory']['counted_peak_mb']:.3f}",
               f"{mem['weights_mb']:.1f}", f"{mem['grads_optimizer_mb']:.2f}", f"{mem['activations_mb']:.1f}",
               f"{mem['activations_mb'] / b['memory']['activations_mb']:.3f}"]
        if cuda:
            row += [f"{mem['cuda_peak_mb']:.1f}", f"{mem['cuda_peak_mb'] / b['memory']['cuda_peak_mb']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Step ms is the median over rounds of one timed block's mean step (forward, backward, optimizer, "
              "controller). Counted peak = weights + gradients and optimizer state + bytes saved for backward. "
              "module-alloc trains only part of its adapters between decisions, so it is expected below 1.",
              "Generated by `bench/methods.py`; one process, the models' timed blocks rotating."]
    if any(c.get("sync") for c in cells.values()):
        lines += ["", "| method | steps without an event | host syncs in the controller's step | "
                  "syncs from dynlora files in forward/backward/optimizer |", "|---|---:|---|---|"]
        for name in result["methods"]:
            s = cells[name]["sync"]
            lines.append(f"| {name} | {s['quiet_steps']} | {len(s['controller_syncs'])} "
                         f"{'; '.join(s['controller_syncs'][:2])} | "
                         f"{', '.join(s['forward_backward_syncs_in_dynlora']) or 'none'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True, help="results folder (methods.json, summary.md, meta.json)")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated; the first is the ratios' base")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--random-from", type=Path, default=None, help="a config.json: random weights of that shape")
    ap.add_argument("--dtype", default=None, help="the base weights: float32 | bfloat16 | float16")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--load-in-4bit", dest="quantize", action="store_const", const="4bit", default=None)
    ap.add_argument("--load-in-8bit", dest="quantize", action="store_const", const="8bit")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--sync-check", type=int, default=0, help="CUDA: steps per method under sync debug mode")
    args = ap.parse_args()

    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    total = args.warmup + args.rounds * args.steps + 2 + args.sync_check  # + the memory steps
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_from is not None:
            folder, name = random_model(args.random_from, Path(tmp) / "model"), f"{args.random_from.stem} (random)"
        else:
            folder, name = resolve_model(args.model), args.model
        lm = is_causal_lm(folder)
        with quiet_loading():
            cells = {m: build(m, folder, lm, args, total) for m in methods}
        vocab = next(iter(cells.values())).model.config.vocab_size
        batch = make_batch(folder, lm, args.batch_size, args.seq_len, vocab, device)
    for cell in cells.values():
        for _ in range(args.warmup):
            one_step(cell, batch, args, device)
    for r in range(args.rounds):
        for cell in (cells.values() if r % 2 == 0 else reversed(list(cells.values()))):
            cell.times.append(timed(cell, batch, args, device))
    for cell in cells.values():
        cell.memory = measure_memory(cell, batch, args, device)
        if args.sync_check and device == "cuda":
            cell.sync = sync_check(cell, batch, args, args.sync_check)
    precision = " + ".join(x for x in [f"{args.dtype} base" if args.dtype else "", "bf16 autocast" if args.bf16 else "",
                                       f"{args.quantize} base" if args.quantize else ""] if x) or "float32"
    result = {"command": " ".join(["python", "bench/methods.py", *sys.argv[1:]]),
              "date": datetime.now().isoformat(timespec="seconds"), "machine": machine(device),
              "model_name": name, "precision": precision, "methods": methods, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "rank": args.rank, "rounds": args.rounds, "steps": args.steps,
              "warmup": args.warmup, "total_steps": total,
              "cells": {m: {"step_ms_median": 1000 * statistics.median(c.times), "step_ms_min": 1000 * min(c.times),
                            "trainable_params": sum(p.numel() for p in c.model.parameters() if p.requires_grad),
                            "memory": c.memory, "sync": c.sync} for m, c in cells.items()}}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "methods.json").write_text(json.dumps(result, indent=2) + "\n")
    meta = {"command": result["command"], "date": result["date"], "machine": result["machine"],
            "settings": {"task": "one fixed batch", "profile": f"methods bench, {precision}"},
            "methods": methods, "seeds": [0]}
    (args.output / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    text = summary(result)
    (args.output / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
