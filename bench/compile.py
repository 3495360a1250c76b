"""``torch.compile`` with ranks that move: how many graphs each rank event costs, and the step time against eager.

Three ways to hold adapters whose ranks change, each under ``torch.compile`` (inductor), against the same
model in eager mode, side by side in one process (MiniLM-L6, LoRA on every linear layer, rt-polarity
batches):

- ``in-graph``: today's layer traced into the graph. A resize makes new parameters of new shapes, so the
  next step recompiles the whole graph; after ``torch._dynamo.config.recompile_limit`` (8) events dynamo
  stops compiling and the run goes on in eager mode, silently.
- ``outside``: the adapter's update excluded from the graph (``torch.compiler.disable``): the base
  compiles between adapters (a graph break at each), and a resize recompiles nothing.
- ``capacity``: every module holds ``--capacity`` slots with a 0/1 mask over the live ranks (the layer's
  per-rank fade): shapes never change, so a rank event (a mask flip) recompiles nothing.

The graph counts come from a counting backend (cheap: no inductor) over ``--events`` simulated events
(one module gives a rank, another takes one); the step times from compiled models without events, in
alternating rounds.

    python bench/compile.py [--events 12] [--rounds 6] [--steps 4] [--capacity 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification

from overhead import make_batch, timed  # bench/ is the script folder: python bench/compile.py
from dynlora.core.inject import AdapterConfig, inject
from dynlora.core.layer import LoraLayer
from dynlora.hf.models import quiet_loading, resolve_model


class OutsideLayer(LoraLayer):
    """The layer with its update run eagerly: the base is traced, the adapter is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._one_cast(x)
        return self._update(self.base(x), x)  # nothing here reads the adapter's shapes: no guard on them

    @torch.compiler.disable
    def _update(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.rank == 0:
            return out
        h, g = self._down(x)
        h, b = self._scaled(h, g)
        return self._add(out, F.linear(h, b) * self.scale)


def build(folder: str, variant: str, rank: int, capacity: int) -> tuple[nn.Module, list[LoraLayer]]:
    torch.manual_seed(0)
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    slots = capacity if variant == "capacity" else rank
    layers = list(inject(model, AdapterConfig(rank=slots, alpha=2 * rank, fade=variant == "capacity")).values())
    for layer in layers:
        if variant == "outside":
            layer.__class__ = OutsideLayer
        if variant == "capacity":
            layer.fade.copy_(torch.cat([torch.ones(rank), torch.zeros(slots - rank)]))
            layer.scale.fill_(2.0)
    return model, layers


def event(layers: list[LoraLayer], variant: str, generator: torch.Generator) -> None:
    """One module gives a rank and another takes one, as the variant holds ranks."""
    a, b = torch.randint(0, len(layers), (2,), generator=generator).tolist()
    if a == b:
        return
    if variant == "capacity":  # flip a live slot of a off and a dead slot of b on, in place
        live_a = layers[a].fade.nonzero().flatten()
        dead_b = (layers[b].fade == 0).nonzero().flatten()
        if len(live_a) > 1 and len(dead_b):
            layers[a].fade[live_a[-1]] = 0.0
            layers[b].fade[dead_b[0]] = 1.0
    elif layers[a].rank > 1:
        layers[a].resize(torch.arange(layers[a].rank - 1))
        layers[b].resize(torch.arange(layers[b].rank), grow=1)


def graphs_per_event(folder: str, variant: str, batch: dict[str, torch.Tensor], events: int, rank: int,
                     capacity: int) -> list[int]:
    """Graphs compiled so far after the first step and after each event (a counting backend, no inductor)."""
    torch._dynamo.reset()
    model, layers = build(folder, variant, rank, capacity)
    count = [0]

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., object]:
        count[0] += 1
        return gm.forward

    step = torch.compile(model, backend=backend)
    generator = torch.Generator().manual_seed(0)
    seen = []
    for i in range(events + 1):
        if i:
            event(layers, variant, generator)
        step(**batch).loss.backward()
        seen.append(count[0])
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=16)
    ap.add_argument("--events", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    folder = resolve_model("minilm")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = {k: v.to(device) for k, v in make_batch(folder, args.batch_size, args.seq_len).items()}
    variants = ("in-graph", "outside", "capacity")
    result: dict[str, object] = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores, {device}",
        "torch": torch.__version__, "config": vars(args),
        "graphs_after_each_event": {v: graphs_per_event(folder, v, batch, args.events, args.rank, args.capacity)
                                    for v in variants}}
    torch._dynamo.reset()
    runs = {}
    for label in ("eager", *variants):
        model, _ = build(folder, "in-graph" if label == "eager" else label, args.rank, args.capacity)
        model.to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        step = model if label == "eager" else torch.compile(model)
        start = time.perf_counter()
        timed(step, opt, batch, 2)  # the compile, then a warm step
        runs[label] = {"step": step, "opt": opt, "times": [], "warmup_s": time.perf_counter() - start}
    labels = list(runs)
    for r in range(args.rounds):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            runs[label]["times"].append(timed(runs[label]["step"], runs[label]["opt"], batch, args.steps))
    eager = statistics.median(runs["eager"]["times"])
    result["step_ms_median"] = {k: 1000 * statistics.median(v["times"]) for k, v in runs.items()}
    result["ratio_to_eager"] = {k: statistics.median(v["times"]) / eager for k, v in runs.items()}
    result["compile_and_first_steps_s"] = {k: v["warmup_s"] for k, v in runs.items()}
    print(f"MiniLM-L6, rank {args.rank} (capacity {args.capacity}), batch {args.batch_size}x{args.seq_len}, {device}")
    print("graphs compiled after the first step and after each rank event:")
    for v, seen in result["graphs_after_each_event"].items():
        print(f"  {v:9} {seen}")
    print(f"{'':9} {'step ms (median)':>17} {'x eager':>8} {'compile + 2 steps s':>20}")
    for k in runs:
        print(f"{k:9} {result['step_ms_median'][k]:17.1f} {result['ratio_to_eager'][k]:8.3f} "
              f"{result['compile_and_first_steps_s'][k]:20.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
