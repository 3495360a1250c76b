"""The price of a fixed-capacity adapter: step time and memory at a slot capacity C with a mask over the live
ranks, against the same adapters at their live rank r, side by side in one process.

A fixed capacity keeps every parameter's shape for the whole run (each module holds C slots; a per-rank
multiplier of 1 for a live slot, 0 for a dead one), so an engine that shards or compiles the model (FSDP2,
DeepSpeed ZeRO, ``torch.compile``) never sees a shape change: a resize only rewrites the mask and
re-initialises slots. It costs the dead slots' compute, their memory and their optimizer state. Here the
mask is dynlora's own per-rank fade (what the adaptive method lowers to switch ranks off); a dead slot's
gradient is exactly zero, so AdamW (no weight decay) never moves it. Timed blocks alternate between the
variants (ABBA), MiniLM-L6 on rt-polarity batches.

    python bench/capacity.py [--live 2] [--capacity 8] [--rounds 10] [--steps 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from overhead import make_batch, memory, one_step, timed  # bench/ is the script folder: python bench/capacity.py
from dynlora.core.inject import AdapterConfig, inject
from dynlora.hf.models import quiet_loading, resolve_model


def build(folder: str, slots: int, live: int) -> nn.Module:
    """MiniLM with LoRA on every linear layer: ``slots`` ranks per module, of which the first ``live`` count
    (a plain rank-``live`` adapter when ``slots == live``)."""
    torch.manual_seed(0)
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    layers = inject(model, AdapterConfig(rank=slots, alpha=2 * live, fade=slots != live))
    for layer in layers.values():
        if layer.fade is not None:
            layer.fade = torch.cat([torch.ones(live), torch.zeros(slots - live)]).to(layer.fade)
            layer.scale.fill_(2.0)  # alpha / live: the live ranks' scale, as the rank-``live`` adapter has
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", type=int, default=2, help="live ranks per module (the run's average rank)")
    ap.add_argument("--capacity", type=int, default=8, help="slots per module")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    folder = resolve_model("minilm")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = {k: v.to(device) for k, v in make_batch(folder, args.batch_size, args.seq_len).items()}
    runs = {}
    for label, slots in (("live", args.live), ("capacity", args.capacity)):
        model = build(folder, slots, args.live).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
        for _ in range(args.warmup):
            one_step(model, opt, batch)
        runs[label] = {"model": model, "opt": opt, "times": [],
                       "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    for r in range(args.rounds):
        for label in (("live", "capacity") if r % 2 == 0 else ("capacity", "live")):
            runs[label]["times"].append(timed(runs[label]["model"], runs[label]["opt"], batch, args.steps))
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores, {device}",
              "torch": torch.__version__, "config": vars(args)}
    for label, run in runs.items():
        result[label] = {"step_ms_median": 1000 * statistics.median(run["times"]),
                         "step_ms_min": 1000 * min(run["times"]), "trainable_params": run["params"],
                         **memory(run["model"], run["opt"], batch)}
    live, cap = result["live"], result["capacity"]
    result["step_time_ratio"] = cap["step_ms_median"] / live["step_ms_median"]
    result["activation_ratio"] = cap["activations_mb"] / live["activations_mb"]
    result["state_ratio"] = cap["grads_and_optimizer_mb"] / live["grads_and_optimizer_mb"]
    print(f"MiniLM-L6, {args.live} live ranks per module, capacity {args.capacity}, batch {args.batch_size}x"
          f"{args.seq_len}, {device}, {args.rounds} alternating rounds x {args.steps} steps")
    print(f"{'':9} {'step ms (median)':>17} {'step ms (min)':>14} {'trainable':>10} {'activations MB':>15} "
          f"{'grads+opt MB':>13}")
    for label in ("live", "capacity"):
        r = result[label]
        print(f"{label:9} {r['step_ms_median']:17.1f} {r['step_ms_min']:14.1f} {r['trainable_params']:10,} "
              f"{r['activations_mb']:15.1f} {r['grads_and_optimizer_mb']:13.2f}")
    print(f"capacity / live: step time {result['step_time_ratio']:.3f}, activations {result['activation_ratio']:.3f}, "
          f"grads + optimizer state {result['state_ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
