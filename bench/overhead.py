"""Step time and training memory of dynlora's static LoRA against PEFT's LoRA, side by side.

Both models (MiniLM-L6, the same targets, rank and alpha) live in one process; timed blocks of steps
alternate between them (ABBA order) so machine noise hits both alike. Prints a table and the ratios.

    python bench/overhead.py [--rounds 10] [--steps 5] [--batch-size 16] [--seq-len 64] [--rank 8]
                             [--variant lora|gated|input-gate|faded]

``--variant`` picks dynlora's layer: plain LoRA (default), with L1RA's per-rank gates, with the
adaptive method's input-feature gate, or with adaptive's per-rank fade multiplier plus the input gate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dynlora.core.inject import AdapterConfig, inject
from dynlora.data.text import load_task
from dynlora.hf.memory import PeakMemory, SavedTensorBytes, training_state_bytes
from dynlora.hf.models import quiet_loading, resolve_model

VARIANTS = {"lora": {}, "gated": {"use_gate": True}, "input-gate": {"input_gate": True},
            "faded": {"input_gate": True}}


def build(kind: str, folder: str, rank: int, targets: list[str] | None,
          variant: str = "lora") -> tuple[nn.Module, list[str]]:
    torch.manual_seed(0)
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    if kind == "dynlora":
        layers = inject(model, AdapterConfig(rank=rank, alpha=2 * rank, **VARIANTS[variant]))
        if variant == "faded":
            for layer in layers.values():
                layer.enable_fade()
        return model, list(layers)
    cfg = LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank, target_modules=targets)
    return get_peft_model(model, cfg), targets or []


def make_batch(folder: str, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = load_task("rt-polarity")
    texts = [ex.text for ex in data.train[:batch_size]]
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    batch["labels"] = torch.tensor([ex.label for ex in data.train[:batch_size]])
    return dict(batch)


def one_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        one_step(model, opt, batch)
    return (time.perf_counter() - start) / steps


def memory(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    with SavedTensorBytes(model) as saved:
        loss = model(**batch).loss
    loss.backward()
    opt.step()
    state = training_state_bytes(model, opt)
    opt.zero_grad(set_to_none=True)
    with PeakMemory() as peak:
        one_step(model, opt, batch)
    return {"activations_mb": saved.bytes / 2**20, "grads_and_optimizer_mb": state / 2**20,
            "peak_delta_mb": peak.delta_mb if peak.cuda else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--variant", default="lora", choices=sorted(VARIANTS), help="dynlora's layer variant")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    folder = resolve_model("minilm")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours, names = build("dynlora", folder, args.rank, None, args.variant)
    theirs, _ = build("peft", folder, args.rank, names)
    batch = {k: v.to(device) for k, v in make_batch(folder, args.batch_size, args.seq_len).items()}
    runs = {}
    for label, model in (("dynlora", ours), ("peft", theirs)):
        model.to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(args.warmup):
            one_step(model, opt, batch)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        runs[label] = {"model": model, "opt": opt, "times": [], "params": params}
    for r in range(args.rounds):
        order = ("dynlora", "peft") if r % 2 == 0 else ("peft", "dynlora")
        for label in order:
            run = runs[label]
            run["times"].append(timed(run["model"], run["opt"], batch, args.steps))
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores, {device}",
              "torch": torch.__version__, "config": vars(args), "modules": len(names)}
    for label, run in runs.items():
        result[label] = {"step_ms_median": 1000 * statistics.median(run["times"]),
                         "step_ms_min": 1000 * min(run["times"]), "trainable_params": run["params"],
                         **memory(run["model"], run["opt"], batch)}
    d, p = result["dynlora"], result["peft"]
    result["step_time_ratio"] = d["step_ms_median"] / p["step_ms_median"]
    result["activation_ratio"] = d["activations_mb"] / p["activations_mb"]
    print(f"MiniLM-L6, dynlora {args.variant}, {len(names)} modules, rank {args.rank}, batch {args.batch_size}x{args.seq_len}, {device}, "
          f"{args.rounds} alternating rounds x {args.steps} steps")
    print(f"{'':8} {'step ms (median)':>17} {'step ms (min)':>14} {'trainable':>10} {'activations MB':>15} "
          f"{'grads+opt MB':>13}")
    for label in ("dynlora", "peft"):
        r = result[label]
        print(f"{label:8} {r['step_ms_median']:17.1f} {r['step_ms_min']:14.1f} {r['trainable_params']:10,} "
              f"{r['activations_mb']:15.1f} {r['grads_and_optimizer_mb']:13.2f}")
    print(f"step time ratio dynlora/peft: {result['step_time_ratio']:.3f}   "
          f"activation memory ratio: {result['activation_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
