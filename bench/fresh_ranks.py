"""How large a grown rank's first optimizer steps are, under each way of starting its Adam state.

One adapter (rank 4 on a 384 x 384 linear, the width of MiniLM's attention) learns a fixed random
low-rank target map under AdamW for ``--grow-at`` steps, then grows 2 ranks and trains on. Reported:
the mean |dB| / lr of the new B columns (and of the old ones) at 1, 2, 5, 10, 20 and 40 steps after the
grow, for

- ``tensor-count``: zero moments, the tensor's step count kept (dynlora before issue 27);
- ``seeded``: the new ranks' second moments seeded with the mean of the kept ranks' (same row), the
  tensor's count kept;
- ``fresh-slots``: zero moments and each rank's own bias correction (``core.fresh_slots``; chosen).

    python bench/fresh_ranks.py [--grow-at 1000] [--output bench/results/fresh-ranks]
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch
from torch import nn

from dynlora.core.fresh_slots import FreshSlots
from dynlora.core.layer import LoraLayer
from dynlora.core.surgery import remap_optimizer_state

AFTER = (1, 2, 5, 10, 20, 40)
LR = 1e-3


def run(option: str, grow_at: int, seed: int = 0) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    width = 384
    layer = LoraLayer(nn.Linear(width, width), rank=4, alpha=8.0)
    layer.base.requires_grad_(False)
    target = torch.randn(width, 8) @ torch.randn(8, width) / width  # a rank-8 map: more than rank 4 can hold
    opt = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=LR)
    slots = FreshSlots()
    if option == "fresh-slots":
        slots.install(opt)

    def train_step() -> None:
        x = torch.randn(64, width)
        (layer(x) - layer.base(x) - x @ target.T).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(grow_at):
        train_step()
    changes = layer.resize(keep=list(range(4)), grow=2, generator=torch.Generator().manual_seed(seed))
    remap_optimizer_state(opt, changes)
    slots.follow(opt, changes)
    if option == "seeded":
        for p, dim in ((layer.lora_A, 0), (layer.lora_B, 1)):
            v = opt.state[p]["exp_avg_sq"]
            seed_v = v.narrow(dim, 0, 4).mean(dim, keepdim=True)
            v.narrow(dim, 4, 2).copy_(seed_v.expand_as(v.narrow(dim, 4, 2)))
    new, old = [], []
    for step in range(1, max(AFTER) + 1):
        before = layer.lora_B.detach().clone()
        train_step()
        delta = (layer.lora_B.detach() - before).abs() / LR
        if step in AFTER:
            new.append(round(float(delta[:, 4:].mean()), 3))
            old.append(round(float(delta[:, :4].mean()), 3))
    return {"new": new, "old": old}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grow-at", type=int, default=1000)
    parser.add_argument("--output", default="bench/results/fresh-ranks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {option: run(option, args.grow_at) for option in ("tensor-count", "seeded", "fresh-slots")}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"grow_at": args.grow_at, "after": AFTER, "lr": LR,
                                                  "results": results}, indent=1))
    lines = ["# A grown rank's first steps: mean |dB| / lr of the new (old) B columns", "",
             f"`python bench/fresh_ranks.py --grow-at {args.grow_at}`; {date.today()}, {platform.machine()}, "
             f"torch {torch.__version__}, 1 thread. A fresh Adam's first updates are about 1 lr.", "",
             "| start of the new ranks | " + " | ".join(f"{a} step{'s' if a > 1 else ''} after" for a in AFTER) + " |",
             "|---|" + "---|" * len(AFTER)]
    for option, row in results.items():
        cells = [f"{n:.2f} ({o:.2f})" for n, o in zip(row["new"], row["old"])]
        lines.append(f"| {option} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
