"""Known-answer allocation: where the right allocation is known, do the rank-moving methods find it?

A teacher is the base model with planted low-rank updates of known, unequal ranks in a few of the
targeted linear modules, attention (value, attention output) and feed-forward (intermediate, output) ones:
``W += U diag(s) V^T`` with random orthonormal ``U``, ``V`` and a flat spectrum, each direction ``s =
strength x ||W||_F``. The strength is set per module (from one forward per planted module) so that every
planted direction moves the hidden states about as much as every other, ``--strength`` 0.1 being their
geometric mean: then each planted direction is worth about the same error wherever it sits, and planted
coverage counts what the student can reach. On MiniLM the updates come out at 12-30 % of their weights'
norms (``--no-equalize``: every direction at ``--strength``). A student is the same base with dynlora
adapters on every targeted module, built as a user builds it::

    model = dynlora.get_dynamic_model(base, dynlora.DynamicLoraConfig(method=NAME, r=8, lora_alpha=16,
                                      rank_budget=B, budget_unit=UNIT, seed=SEED))
    controller = dynlora.attach(model, optimizer, total_steps=N)
    ... loss.backward(); optimizer.step(); controller.step(); scheduler.step(); optimizer.zero_grad()

(AdamW on the method's own param groups where it has them, as ``dynlora train`` builds it; the learning
rate warms up over 6 % of the run and decays linearly, as the Trainer's default.) It learns to reproduce
the teacher's last and middle hidden states (masked MSE summed over both, divided by the base model's
MSE against the teacher: 1 = learned nothing, 0 = the teacher). The inputs are real text (rt-polarity
sentences, so that the planted directions are seen through real activations; ``--model tiny``, a
random-weight BERT without a tokenizer, uses random token ids). Dropout is off: the target is exact.
Held-out error is that relative MSE on validation sentences the student never saw. ``--lr`` 3e-3: at
dynlora's 1e-3, 300 MiniLM steps left even the oracle far from the teacher (0.22 against uniform's 0.37,
a teacher without equalized strengths), at 3e-3 the oracle gets close (0.05 against 0.23), so the planted
answer decides the error.

Arms, per case, budget and seed:

- ``uniform``: static LoRA (method ``lora``) at the even split of the budget (dynlora's split).
- ``oracle``: static LoRA on the known answer under the methods' own rules: every module keeps the
  fewest ranks the methods allow by default (1), each planted module is raised to its planted rank, and
  what is left of the budget goes one rank at a time to the modules with nothing planted (model order,
  while it fits), so the oracle spends the budget as every other arm does. Under a budget below the
  planted total, each free rank goes to the planted module with the most planted ranks still missing
  (ties: model order; every direction is worth about the same, so no order is better).
- every method named (``l1ra``, ``adaptive``, ``module-alloc`` at their defaults; ``name:variant`` and
  ``name@knob=value`` as in ``dynlora compare``). module-alloc does not move ranks: it is reported for
  which modules it trains (its last selection is in the results).

Cases: ``planted`` (the unequal ranks of ``PLANTS``) and ``null`` (every targeted module gets the same
planted rank 1 at ``--strength``, so uniform is already the answer: moving rank must cost nothing; it
runs at the first budget only, without an oracle). Budgets are average ranks over the targeted modules
(``--budgets 2,1.25``: 72 and 45 ranks on MiniLM's 36 modules; the planted total is 21, so 2 covers it,
and 1.25, with every module at rank >= 1, leaves 9 free ranks for the 16 the planted modules need beyond
rank 1: at most 14/21 of it can be covered).

Reported per arm: held-out error; the share of the uniform-to-oracle gap closed, (uniform - arm) /
(uniform - oracle), per seed; planted coverage, sum over planted modules of min(final rank, planted rank)
/ planted total; the share of the budget (in ``--unit``) that ended in planted modules; the number of
ranks that moved (ranks grown over all events: the budget is conserved, so each came from elsewhere);
the final rank of every module.

Each finished (case, budget, arm, seed) row is appended to ``results.json`` at once, with the commit it
ran on (and a digest of any uncommitted change to dynlora/); a rerun skips the rows done (its settings
must match) and rewrites ``summary.md`` (a BENCHMARKS.md section) and ``meta.json``. ``--rerun`` runs the
named arms again and replaces their rows: after a change to a method, ``--methods l1ra --rerun`` measures
it against the uniform and oracle rows already there.

    python bench/planted.py --output bench/results/planted-minilm [--model minilm|tiny] [--steps 300]
        [--seeds 0] [--methods uniform,oracle,l1ra,adaptive,module-alloc] [--budgets 2,1.25]
        [--cases planted,null] [--unit rank|params] [--lr 3e-3] [--batch-size 8] [--seq-len 32]
        [--strength 0.1] [--no-equalize] [--eval-size 256] [--threads 1] [--rerun]

The default MiniLM run (14 rows at one seed) took 19 minutes on one thread of the shared 2-core machine:
66-84 s a row, 30-56 s for a case's teacher targets; ``--methods`` and ``--seeds`` run it in slices.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARMS = "uniform,oracle,l1ra,adaptive,module-alloc"
STATIC_ARMS = ("uniform", "oracle")
MIN_RANK = 1  # the fewest ranks per module that lora's even split and every method allow by default
R, ALPHA = 8, 16.0  # dynlora's defaults; with a rank budget every adapter's scale is ALPHA / R whatever its rank

# planted modules and ranks: attention (value, attention output) and feed-forward (intermediate, output) ones.
# MiniLM's were picked among modules whose rank-1 update of 10 % of the weight's norm moves the last hidden
# state by a similar amount (2.6e-4 to 1.6e-3 MSE; query and key move it 10-50x less, so a planted query
# would test whether its signal can be seen at all, not where rank goes); the equalized strengths even out
# the rest
PLANTS: dict[str, dict[str, int]] = {
    "minilm": {"encoder.layer.0.intermediate.dense": 6, "encoder.layer.2.attention.self.value": 2,
               "encoder.layer.3.output.dense": 1, "encoder.layer.4.intermediate.dense": 8,
               "encoder.layer.5.attention.output.dense": 4},
    "tiny": {"encoder.layer.0.intermediate.dense": 6, "encoder.layer.1.attention.self.value": 3,
             "encoder.layer.1.output.dense": 1},
}
NULL_RANK = 1


# ---- the known answer and the report's arithmetic (pure) ----------------------------------------------------
def budget_ranks(average: float, modules: int) -> int:
    """The rank budget of an average rank over ``modules`` (rounded to the nearest whole rank)."""
    return max(1, round(average * modules))


def even_split(names: Sequence[str], budget: int) -> dict[str, int]:
    """dynlora's even split (earlier modules take the remainder), as ``get_dynamic_model`` makes it."""
    from dynlora.decide.allocate import even_ranks

    return even_ranks(list(names), budget, MIN_RANK)


def oracle_ranks(names: Sequence[str], planted: Mapping[str, int], costs: Mapping[str, int], budget: int,
                 min_rank: int = MIN_RANK) -> dict[str, int]:
    """The known answer within ``budget`` (in the unit ``costs`` count): every module at ``min_rank``, planted
    modules up to their planted rank (most missing first), what is left to the others, one rank at a time."""
    ranks = {n: min_rank for n in names}
    left = budget - sum(min_rank * costs[n] for n in names)
    if left < 0:
        raise ValueError(f"budget {budget} cannot give every module {min_rank} rank(s)")
    while True:  # planted ranks first: the one with the most still missing, ties in model order
        wanting = [n for n in names if ranks[n] < planted.get(n, 0) and costs[n] <= left]
        if not wanting:
            break
        pick = max(wanting, key=lambda n: (planted[n] - ranks[n], -names.index(n)))
        ranks[pick] += 1
        left -= costs[pick]
    others = [n for n in names if n not in planted]
    while others and any(costs[n] <= left for n in others):  # the rest of the budget: round-robin
        for n in others:
            if costs[n] <= left:
                ranks[n] += 1
                left -= costs[n]
    return ranks


def coverage(ranks: Mapping[str, int], planted: Mapping[str, int]) -> float:
    """Sum over planted modules of min(rank, planted rank), over the planted total."""
    return sum(min(ranks.get(n, 0), r) for n, r in planted.items()) / sum(planted.values())


def planted_share(ranks: Mapping[str, int], planted: Mapping[str, int], costs: Mapping[str, int]) -> float:
    """The share of what the ranks cost (in the unit of ``costs``) that sits in planted modules."""
    total = sum(r * costs[n] for n, r in ranks.items())
    return sum(ranks[n] * costs[n] for n in planted if n in ranks) / total if total else 0.0


def rank_moves(history: Sequence[Mapping[str, int]]) -> int:
    """Ranks grown over a run's successive rank records (each came from elsewhere: the budget is conserved)."""
    return sum(max(0, after.get(n, 0) - before.get(n, 0))
               for before, after in zip(history, history[1:]) for n in after)


def gap_closed(uniform: float, arm: float, oracle: float) -> float | None:
    """(uniform - arm) / (uniform - oracle); None when the oracle is no better than uniform (no gap)."""
    gap = uniform - oracle
    return (uniform - arm) / gap if gap > 0 else None


# ---- teacher and data ---------------------------------------------------------------------------------------
def tiny_base() -> nn.Module:
    """A random BERT (hidden 32, 2 layers, 12 targeted modules), seed 0, dropout off."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertModel(cfg, add_pooling_layer=False).eval()


def minilm_base() -> nn.Module:
    """The embedded MiniLM-L6 encoder without its pooler (36 targeted modules), dropout off."""
    from transformers import AutoModel

    from dynlora.hf.models import quiet_loading, resolve_model

    with quiet_loading():
        return AutoModel.from_pretrained(resolve_model("minilm"), add_pooling_layer=False, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0).eval()


def target_names(model: nn.Module) -> list[str]:
    """The modules every arm adapts: all linear ones (the pooler is not built)."""
    from dynlora.core.inject import match_targets

    return match_targets(model, "all-linear")


@torch.no_grad()
def plant(model: nn.Module, planted: Mapping[str, int], strength: float | Mapping[str, float],
          seed: int = 0) -> dict[str, float]:
    """Add ``U diag(s) V^T`` (flat spectrum, each s = strength x ||W||_F; ``strength`` may be per module) to
    each planted module's weight, in place; returns each update's norm over its weight's norm. Each module's
    draw depends only on ``seed`` and its name, so a module planted alone gets the teacher's update."""
    ratios = {}
    for name, rank in planted.items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))
        weight = model.get_submodule(name).weight  # (out, in)
        u, _ = torch.linalg.qr(torch.randn(weight.shape[0], rank, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(weight.shape[1], rank, generator=g, dtype=torch.float64))
        s = strength[name] if isinstance(strength, Mapping) else strength
        norm = float(weight.norm())
        delta = (u * (s * norm)) @ v.T  # (out, in), every direction s x ||W||_F
        weight += delta.to(weight.dtype)
        ratios[name] = float(delta.norm()) / norm
    return ratios


@dataclass
class Inputs:
    """Token ids and masks of the training and held-out sentences: (n, seq_len)."""

    train_ids: torch.Tensor
    train_mask: torch.Tensor
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor
    source: str


def load_inputs(model_kind: str, n_train: int, n_eval: int, seq_len: int, vocab: int) -> Inputs:
    """rt-polarity train / validation sentences (MiniLM's tokenizer); random ids for the tiny model."""
    if model_kind == "tiny":
        g = torch.Generator().manual_seed(1234)
        train = torch.randint(1, vocab, (n_train, seq_len), generator=g)
        held = torch.randint(1, vocab, (n_eval, seq_len), generator=g)
        return Inputs(train, torch.ones_like(train), held, torch.ones_like(held), "random token ids")
    from transformers import AutoTokenizer

    from dynlora.data.text import load_task
    from dynlora.hf.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    task = load_task("rt-polarity")
    texts = [ex.text for ex in task.train]
    texts = (texts * math.ceil(n_train / len(texts)))[:n_train]  # a run longer than the split cycles it
    held = [ex.text for ex in task.validation[:n_eval]]

    def encode(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(batch, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    return Inputs(*encode(texts), *encode(held), f"rt-polarity ({len(texts)} train, {len(held)} validation)")


def hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state, the middle layer's output), each (batch, seq, hidden)."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    middle = len(out.hidden_states) // 2  # hidden_states[0] is the embeddings
    return out.last_hidden_state, out.hidden_states[middle]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the real tokens and the hidden units."""
    m = mask.unsqueeze(-1).to(a.dtype)  # (batch, seq, 1)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1])


@torch.no_grad()
def error_of(out: Sequence[torch.Tensor], target: Sequence[torch.Tensor], mask: torch.Tensor) -> float:
    """The summed masked MSE of (last, middle) hidden states against a target's."""
    return float(sum(masked_mse(a, b, mask) for a, b in zip(out, target)))


@torch.no_grad()
def equal_strengths(base: nn.Module, planted: Mapping[str, int], inputs: Inputs, strength: float,
                    n: int = 128) -> dict[str, float]:
    """Per planted module, the strength at which each of its directions moves the hidden states (of the first
    ``n`` training sentences) as much as one direction does on average (geometric mean over the modules) at
    ``strength``: then every planted direction is worth about the same error, wherever it sits."""
    ids, mask = inputs.train_ids[:n], inputs.train_mask[:n]
    ref = hidden(base, ids, mask)
    per_direction = {}
    for name, rank in planted.items():
        weight = base.get_submodule(name).weight
        saved = weight.clone()
        plant(base, {name: rank}, strength)
        per_direction[name] = error_of(hidden(base, ids, mask), ref, mask) / rank
        weight.copy_(saved)
    target = math.exp(statistics.fmean(math.log(d) for d in per_direction.values()))
    # a small update moves the hidden states' MSE about as its strength squared
    return {name: strength * math.sqrt(target / d) for name, d in per_direction.items()}


@dataclass
class Targets:
    """The teacher's hidden states for the inputs, and the base model's error against them."""

    train: tuple[torch.Tensor, torch.Tensor]
    held: tuple[torch.Tensor, torch.Tensor]
    base_train: float  # the base model's summed MSE against the teacher (on up to 512 training sentences)
    base_held: float
    strengths: dict[str, float]  # per planted module: each direction's s over ||W||_F
    norm_ratios: dict[str, float]  # per planted module: ||update|| / ||W||
    effects: dict[str, float]  # per planted module: the MSE that planting it alone causes (128 held-out sentences)


@torch.no_grad()
def teacher_targets(base: nn.Module, planted: Mapping[str, int], inputs: Inputs, strength: float,
                    equalize: bool = True, effects: bool = True, chunk: int = 64) -> Targets:
    """Plant into a copy of ``base`` (strengths equalized per direction with ``equalize``), run it over the
    inputs once; with ``effects``, also each planted module's update alone over the held-out inputs."""
    base.eval()
    strengths = equal_strengths(base, planted, inputs, strength) if equalize else {n: strength for n in planted}
    teacher = copy.deepcopy(base)
    ratios = plant(teacher, planted, strengths)

    def run(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [hidden(model, ids[i:i + chunk], mask[i:i + chunk]) for i in range(0, len(ids), chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    train, held = run(teacher, inputs.train_ids, inputs.train_mask), run(teacher, inputs.eval_ids, inputs.eval_mask)
    some = slice(0, 256)  # the loss's yardstick only: a subset saves a pass over every training sentence
    base_train = error_of(run(base, inputs.train_ids[some], inputs.train_mask[some]),
                          [t[some] for t in train], inputs.train_mask[some])
    base_out = run(base, inputs.eval_ids, inputs.eval_mask)
    base_held = error_of(base_out, held, inputs.eval_mask)
    alone_errors = {}
    few = slice(0, 128)  # a report, not a yardstick: half the held-out sentences are enough
    for name in planted if effects else ():  # what each planted module alone does to the held-out hidden states
        weight = base.get_submodule(name).weight
        saved = weight.clone()
        weight.copy_(teacher.get_submodule(name).weight)
        alone_errors[name] = error_of(run(base, inputs.eval_ids[few], inputs.eval_mask[few]),
                                      [b[few] for b in base_out], inputs.eval_mask[few])
        weight.copy_(saved)
    return Targets(train, held, base_train, base_held, strengths, ratios, alone_errors)


# ---- one arm ------------------------------------------------------------------------------------------------
def rank_costs(model: nn.Module, names: Sequence[str], unit: str) -> dict[str, int]:
    """What one rank of plain LoRA costs on each module in ``unit`` (the yardstick of the budget)."""
    from dynlora.core.count import linear_lora_cost
    from dynlora.core.linear import in_out_features

    out = {}
    for n in names:
        fan_in, fan_out = in_out_features(model.get_submodule(n))
        out[n] = linear_lora_cost(fan_in, fan_out, 1, unit)
    return out


def build(arm: str, base: nn.Module, names: Sequence[str], budget: int, unit: str, seed: int, steps: int,
          lr: float, oracle: Mapping[str, int]) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """A fresh student for ``arm``: the adapted model, its AdamW and its controller."""
    import dynlora
    from dynlora.methods import registry

    model = copy.deepcopy(base)
    if arm == "oracle":  # a rank pattern is not a DynamicLoraConfig field: inject it as a LoRA user would
        dynlora.inject(model, dynlora.AdapterConfig(rank=R, alpha=ALPHA, rank_pattern=dict(oracle)),
                       generator=torch.Generator().manual_seed(seed))
        controller = dynlora.Controller(model, None, seed=seed, budget_unit=unit)
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        name, own = ("lora", {}) if arm == "uniform" else (arm, {})
        if "@" in arm:  # a method's own knobs, as compare reads them (compare imports the Trainer: only then)
            from dynlora.tools.compare import split_method

            name, own = split_method(arm)
        own_lr = own.pop("lr", lr)
        config = dynlora.DynamicLoraConfig(method=name, r=R, lora_alpha=ALPHA, rank_budget=budget,
                                           budget_unit=unit, seed=seed, method_config=own or None)
        dynlora.get_dynamic_model(model, config)
        spec = registry.get(name)
        groups = (spec.param_groups(model, own_lr, config.method_config, 0.0) if spec.param_groups is not None
                  else [{"params": [p for p in model.parameters() if p.requires_grad]}])
        lr = own_lr
        controller = None
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    if controller is None:
        controller = dynlora.attach(model, optimizer, total_steps=steps)
    else:
        controller.optimizer = optimizer
    return model, optimizer, controller


def warmup_decay(steps: int, warmup: float = 0.06) -> Any:
    """The Trainer's default: linear warm-up over ``warmup`` of the run, then linear decay to 0."""
    n = max(1, round(warmup * steps))
    return lambda s: (s + 1) / n if s < n else max(0.0, (steps - s) / max(1, steps - n))


@torch.no_grad()
def held_out_error(model: nn.Module, inputs: Inputs, targets: Targets, chunk: int = 64) -> float:
    """The summed masked MSE against the teacher on the held-out sentences, over the base model's."""
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(inputs.eval_ids), chunk):
        ids, mask = inputs.eval_ids[i:i + chunk], inputs.eval_mask[i:i + chunk]
        out = hidden(model, ids, mask)
        weight = float(mask.sum()) / float(inputs.eval_mask.sum())  # token-weighted, as over the whole set
        total += weight * float(sum(masked_mse(a, t[i:i + chunk], mask) for a, t in zip(out, targets.held)))
    model.train(was)
    return total / targets.base_held


def live_ranks(layer: Any) -> int:
    """Ranks that still contribute: gate x fade above L1RA's pruning threshold (all, without either)."""
    mult = torch.ones(layer.rank)
    for per_rank in (layer.gate, layer.fade):
        if per_rank is not None:
            mult = mult * per_rank.detach().float().cpu()
    return int((mult.abs() > 1e-6).sum())


def train_arm(arm: str, base: nn.Module, names: Sequence[str], planted: Mapping[str, int], inputs: Inputs,
              targets: Targets, budget: int, unit: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one student and measure it: one results row."""
    costs = rank_costs(base, names, unit)
    yardstick = sum(r * costs[n] for n, r in even_split(names, budget).items())  # the budget in ``unit``
    oracle = oracle_ranks(names, planted, costs, yardstick) if arm == "oracle" else {}
    start = time.perf_counter()
    model, optimizer, controller = build(arm, base, names, budget, unit, seed, args.steps, args.lr, oracle)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_decay(args.steps))
    order = torch.randperm(len(inputs.train_ids), generator=torch.Generator().manual_seed(seed))
    model.train()
    losses = []
    for step in range(args.steps):
        idx = order[(torch.arange(args.batch_size) + step * args.batch_size) % len(order)]
        mask = inputs.train_mask[idx]
        out = hidden(model, inputs.train_ids[idx], mask)
        loss = sum(masked_mse(a, t[idx], mask) for a, t in zip(out, targets.train)) / targets.base_train
        loss.backward()
        optimizer.step()
        controller.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise SystemExit(f"{arm} seed {seed}: loss {losses[-1]} at step {step + 1}")
    controller.finish()
    error = held_out_error(model, inputs, targets)
    wall = time.perf_counter() - start
    final = controller.ranks()
    records = [e.ranks for e in controller.history if e.ranks is not None]
    spent = sum(r * costs[n] for n, r in final.items())
    selections = [list(e.active) for e in controller.history if e.active is not None]
    tail = losses[-max(1, len(losses) // 10):]
    return {"error": error, "train_loss_end": sum(tail) / len(tail), "coverage": coverage(final, planted),
            "planted_share": planted_share(final, planted, costs), "moves": rank_moves(records),
            "events": sum(1 for e in controller.history if e.event not in ("init", "end")),
            "budget": yardstick, "spent": spent, "ranks": final,
            "live_ranks": {n: live_ranks(layer) for n, layer in controller.layers.items()},
            "last_selection": selections[-1] if selections else None, "wall_s": round(wall, 1)}


# ---- results, summary ---------------------------------------------------------------------------------------
def code_version() -> dict[str, Any]:
    """The commit the run stands on, and a digest and the files of any uncommitted change to dynlora/."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    new = git("ls-files", "--others", "--exclude-standard", "--", "dynlora").split()  # untracked modules count too
    diff = git("diff", "HEAD", "--", "dynlora") + "".join(f"{n}\n" + (ROOT / n).read_text(errors="replace")
                                                          for n in new)
    return {"commit": git("rev-parse", "--short=12", "HEAD").strip() or "unknown",
            "dynlora_uncommitted": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
            "uncommitted_files": git("diff", "HEAD", "--name-only", "--", "dynlora").split() + new}


def code_label(code: Mapping[str, Any]) -> str:
    """``abc123`` or ``abc123 + uncommitted dynlora/ (digest: files)``."""
    if not code.get("dynlora_uncommitted"):
        return str(code["commit"])
    return (f"{code['commit']} + uncommitted dynlora/ changes ({code['dynlora_uncommitted']}: "
            f"{', '.join(code.get('uncommitted_files', []))})")


def arm_order(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """uniform, oracle, then the methods as they first appear."""
    seen = list(dict.fromkeys(r["method"] for r in rows))
    return [a for a in STATIC_ARMS if a in seen] + [a for a in seen if a not in STATIC_ARMS]


def row_key(row: Mapping[str, Any]) -> tuple[str, float, str, int]:
    return row["case"], float(row["avg_rank"]), row["method"], int(row["seed"])


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Add one finished row, replacing one of the same key (written to a temporary file first: an interrupted
    write loses nothing)."""
    rows = [r for r in load_rows(path) if row_key(r) != row_key(row)] + [dict(row)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(path)


def _stat(values: Sequence[float | None], fmt: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    return format(mean, fmt) + (f" ± {format(statistics.stdev(vals), fmt)}" if len(vals) > 1 else "")


def _mean(values: Sequence[float]) -> str:
    """A mean rank, whole when it is whole."""
    mean = statistics.fmean(values)
    return f"{mean:.0f}" if mean == round(mean) else f"{mean:.2f}"


def short(name: str) -> str:
    """``encoder.layer.4.attention.self.value`` -> ``L4.value``."""
    parts = name.split(".")
    layer = parts[2] if len(parts) > 2 and parts[1] == "layer" else "?"
    leaf = {"query": "q", "key": "k", "value": "v"}.get(parts[-1], "")
    if not leaf:
        leaf = "attn.out" if "attention" in name else ("ffn.in" if "intermediate" in name else "ffn.out")
    return f"L{layer}.{leaf}"


def with_gaps(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its gap closed against uniform and the oracle of the same case, budget and seed."""
    errors = {row_key(r): r["error"] for r in rows}
    out = []
    for r in rows:
        case, avg, _, seed = row_key(r)
        u, o = errors.get((case, avg, "uniform", seed)), errors.get((case, avg, "oracle", seed))
        gap = gap_closed(u, r["error"], o) if u is not None and o is not None else None
        vs_uniform = (r["error"] - u) / u if u is not None else None
        out.append({**r, "gap_closed": gap, "vs_uniform": vs_uniform})
    return out


def _header(meta: Mapping[str, Any], labels: Sequence[str]) -> list[str]:
    """The set-up: the runs that made the rows (command, date, code), machine, teacher, student, terms."""
    s, m = meta["settings"], meta["machine"]
    planted = s["planted"]
    lines = [f"# Known-answer allocation: planted low-rank updates, {s['model']}", ""]
    lines += [f"- command: `{r['command']}` ({r['date']}, code {code_label(r['code'])})" for r in meta["runs"]]
    lines += [f"- machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} thread), "
              f"transformers {m['transformers']}",
              f"- code: {'; '.join(labels)}" + (" (each row's commit: next to its arm)" if len(labels) > 1 else ""),
              f"- teacher: {s['model']} with planted updates U diag(s) V^T (random orthonormal U, V; flat spectrum, "
              "each direction s = strength x ||W||_F, "
              + (f"strengths set per module so that every direction moves the hidden states alike, geometric mean "
                 f"{s['strength']:g}" if s["equalize"] else f"strength {s['strength']:g}")
              + f") in {len(planted)} of the {s['modules']} targeted modules: "
              + ", ".join(f"{short(n)} rank {r} (strength {s['strengths'][n]:.3f}, update {s['norm_ratios'][n]:.0%} "
                          f"of the weight, MSE {s['effects'][n]:.2g} alone)" for n, r in planted.items())
              + f"; planted total {sum(planted.values())}. Base model's held-out MSE against the teacher: "
              f"{s['base_held']:.3g} (last + middle hidden state)",
              f"- student: every targeted module adapted, r {R} / alpha {ALPHA:g} (scale {ALPHA / R:g} at any rank), "
              f"AdamW lr {s['lr']:g}, 6 % warm-up then linear decay, {s['steps']} steps x batch {s['batch_size']} "
              f"x {s['seq_len']} tokens of {s['inputs']}; budget unit {s['unit']}; "
              f"seeds {', '.join(map(str, meta['seeds']))}",
              "- error: held-out MSE over the base model's (1 = nothing learned); gap closed: (uniform - arm) / "
              "(uniform - oracle), per seed; coverage: sum over planted modules of min(final rank, planted) / "
              "planted total; in planted: share of the budget there at the end; moves: ranks grown over the run's "
              "events; last selection: the modules a selecting method trains at the end (of them, planted). "
              "Mean ± standard deviation over seeds.", ""]
    return lines


def _arm_rows(case: str, group: Sequence[Mapping[str, Any]], arms: Sequence[str], planted: Mapping[str, int],
              several_codes: bool) -> list[str]:
    """One case and budget: a line per arm."""
    if case == "null":
        lines = ["Every targeted module planted at rank 1: uniform is the answer; `vs uniform` is "
                 "(arm - uniform) / uniform of the error (> 0: worse).", "",
                 "| arm | error | vs uniform | moves | events | min-max final rank | s per row |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
    else:
        lines = ["| arm | error | gap closed | coverage | in planted | moves | events | "
                 "planted modules: final rank / planted | last selection: trained (planted) | s per row |",
                 "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for arm in arms:
        sel = [r for r in group if r["method"] == arm]
        if not sel:
            continue
        label = f"{arm} ({', '.join(sorted({r['code']['commit'] for r in sel}))})" if several_codes else arm
        common = [_stat([r["moves"] for r in sel], ".0f"), _stat([r["events"] for r in sel], ".0f")]
        wall = _stat([r["wall_s"] for r in sel], ".0f")
        if case == "null":
            low, high = min(min(r["ranks"].values()) for r in sel), max(max(r["ranks"].values()) for r in sel)
            cells = [_stat([r["vs_uniform"] for r in sel], "+.3f"), *common, f"{low}-{high}"]
        else:
            finals = " ".join(f"{short(n)} {_mean([r['ranks'][n] for r in sel])}/{p}" for n, p in planted.items())
            chosen = [r["last_selection"] for r in sel if r.get("last_selection") is not None]
            trained = (f"{_mean([len(c) for c in chosen])} ({_mean([len(set(c) & set(planted)) for c in chosen])}"
                       f"/{len(planted)})" if chosen else "all")
            cells = [_stat([r["gap_closed"] for r in sel], ".2f"), _stat([r["coverage"] for r in sel], ".2f"),
                     _stat([r["planted_share"] for r in sel], ".2f"), *common, finals, trained]
        lines.append(f"| {label} | {_stat([r['error'] for r in sel], '.4f')} | " + " | ".join(cells) + f" | {wall} |")
    return lines


def _rank_table(case: str, group: Sequence[Mapping[str, Any]], arms: Sequence[str],
                planted: Mapping[str, int]) -> list[str]:
    """The final rank of every module under every arm (mean over seeds)."""
    present = [a for a in arms if any(r["method"] == a for r in group)]
    lines = ["Final rank of every module (mean over seeds" + ("; `*` planted, with its planted rank" if case != "null"
                                                            else "") + "):", "",
             "| module | " + " | ".join(present) + " |", "|---" + "|---:" * len(present) + "|"]
    for n in group[0]["ranks"]:
        mark = f" *{planted[n]}" if case != "null" and n in planted else ""
        cells = [_mean([r["ranks"][n] for r in group if r["method"] == a]) for a in present]
        lines.append(f"| {short(n)}{mark} | " + " | ".join(cells) + " |")
    return lines


def summary(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """summary.md: how the rows were made, then per case and budget a table of the arms and every final rank."""
    rows = with_gaps(rows)
    arms, planted = arm_order(rows), meta["settings"]["planted"]
    labels = sorted({code_label(r["code"]) for r in rows})
    lines = _header(meta, labels)
    for case in dict.fromkeys(r["case"] for r in rows):
        for avg in dict.fromkeys(r["avg_rank"] for r in rows if r["case"] == case):
            group = [r for r in rows if r["case"] == case and r["avg_rank"] == avg]
            b = group[0]
            lines += [f"## {case}, average rank {avg:g} ({b['rank_budget']} ranks; budget {b['budget']} "
                      f"{meta['settings']['unit']})", ""]
            lines += _arm_rows(case, group, arms, planted, len(labels) > 1) + [""]
            lines += _rank_table(case, group, arms, planted) + [""]
    lines.append("Generated by `bench/planted.py` from `results.json` (one row per case, budget, arm and seed).")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    import transformers

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(), "device": "cpu"}


def parse_list(text: str, kind: type = str) -> list[Any]:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What every row of a results folder must share (a rerun with others refuses the folder)."""
    return {"model": args.model, "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "strength": args.strength, "equalize": args.equalize, "unit": args.unit,
            "eval_size": args.eval_size}


def jobs(cases: Iterable[str], budgets: Sequence[float], arms: Sequence[str], seeds: Sequence[int]
         ) -> list[tuple[str, float, str, int]]:
    """Every (case, average rank, arm, seed) to run; the null case at the first budget, without an oracle."""
    out = []
    for case in cases:
        for avg in (budgets if case == "planted" else budgets[:1]):
            for arm in arms:
                if case == "null" and arm == "oracle":
                    continue
                out += [(case, float(avg), arm, seed) for seed in seeds]
    return out


INFO = ("planted", "effects", "norm_ratios", "strengths", "base_held", "inputs")  # the planted teacher's


def write_report(out: Path, args: argparse.Namespace, runs: Sequence[Mapping[str, Any]], info: Mapping[str, Any]
                 ) -> None:
    """meta.json and summary.md from the rows in ``out/results.json`` (after every row: always current)."""
    rows = load_rows(out / "results.json")
    if not rows:
        return
    last = runs[-1]
    meta = {"command": last["command"], "date": last["date"], "machine": last["machine"], "code": last["code"],
            "runs": list(runs),
            "settings": {**settings_of(args), **info, "modules": len(rows[0]["ranks"]),
                         "task": "planted low-rank teacher",
                         "profile": f"known-answer allocation, {args.model}, {args.steps} steps"},
            "methods": arm_order(rows), "seeds": sorted({r["seed"] for r in rows})}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "summary.md").write_text(summary(rows, meta))


def run(args: argparse.Namespace, log: Any = print) -> list[dict[str, Any]]:
    """Run every missing row (``--rerun``: every named one) into ``args.output``; returns all rows."""
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    settings = settings_of(args)
    rows = load_rows(results)
    if rows and rows[0]["settings"] != settings:
        raise SystemExit(f"{results} holds rows with settings {rows[0]['settings']}, not {settings}: "
                         "give another --output")
    prev = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else {}
    runs = list(prev.get("runs", []))
    if not runs and "command" in prev:  # a folder written before meta.json listed its runs
        runs = [{k: prev[k] for k in ("command", "date", "machine", "code")} | {"rows": len(rows)}]
    info = {k: prev["settings"][k] for k in INFO if k in prev.get("settings", {})}
    done = {row_key(r) for r in rows}
    todo = [j for j in jobs(args.cases, args.budgets, args.methods, args.seeds) if args.rerun or j not in done]
    if not todo:
        if runs:
            write_report(out, args, runs, info)
        return load_rows(results)
    import dynlora.methods  # noqa: F401  every method's code loaded now, so the version read next is the one that runs

    base = tiny_base() if args.model == "tiny" else minilm_base()
    names = target_names(base)
    runs.append({"command": " ".join(["python", "bench/planted.py", *args.argv]),
                 "date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "code": code_version(),
                 "rows": len(todo)})
    for case in dict.fromkeys(j[0] for j in todo):
        planted = dict(PLANTS[args.model]) if case == "planted" else {n: NULL_RANK for n in names}
        inputs = load_inputs(args.model, args.steps * args.batch_size, args.eval_size, args.seq_len,
                             base.config.vocab_size)
        t0 = time.perf_counter()
        targets = teacher_targets(base, planted, inputs, args.strength, equalize=args.equalize and case == "planted",
                                  effects=case == "planted")
        log(f"{case}: teacher targets in {time.perf_counter() - t0:.0f} s; base held-out MSE {targets.base_held:.4g}")
        if case == "planted":
            info = {"planted": planted, "effects": targets.effects, "norm_ratios": targets.norm_ratios,
                    "strengths": targets.strengths, "base_held": targets.base_held, "inputs": inputs.source}
        elif not info:  # a null-only folder: no planted modules to describe
            info = {"planted": {}, "effects": {}, "norm_ratios": {}, "strengths": {}, "base_held": float("nan"),
                    "inputs": inputs.source}
        for _, avg, arm, seed in (j for j in todo if j[0] == case):
            budget = budget_ranks(avg, len(names))
            row = {"case": case, "avg_rank": avg, "rank_budget": budget, "method": arm, "seed": seed,
                   "planted": planted if case == "planted" else {"*": NULL_RANK}, "settings": settings,
                   "code": runs[-1]["code"],
                   **train_arm(arm, base, names, planted, inputs, targets, budget, args.unit, seed, args)}
            append_row(results, row)
            write_report(out, args, runs, info)
            log(f"{case} avg {avg:g} {arm} seed {seed}: error {row['error']:.4f} coverage {row['coverage']:.2f} "
                f"moves {row['moves']} ({row['wall_s']:.0f} s)")
    return load_rows(results)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True, help="results folder (results.json, summary.md, meta.json)")
    ap.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=lambda t: parse_list(t, int), default=[0], help="comma-separated")
    ap.add_argument("--methods", type=parse_list, default=parse_list(DEFAULT_ARMS),
                    help="comma-separated arms: uniform, oracle, and dynlora methods (name:variant, name@knob=value)")
    ap.add_argument("--budgets", type=lambda t: parse_list(t, float), default=[2.0, 1.25],
                    help="average ranks over the targeted modules; the first covers the planted total")
    ap.add_argument("--cases", type=parse_list, default=["planted", "null"], help="planted, null")
    ap.add_argument("--unit", choices=("rank", "params"), default="rank", help="what the budget counts")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--strength", type=float, default=0.1, help="each planted direction's s over ||W||_F")
    ap.add_argument("--no-equalize", dest="equalize", action="store_false",
                    help="every planted direction at --strength (default: strengths set so that each direction "
                         "moves the hidden states alike, --strength on their geometric mean)")
    ap.add_argument("--eval-size", type=int, default=256, help="held-out sentences")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    ap.add_argument("--rerun", action="store_true", help="run the named arms again, replacing their rows")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one tokenizer call, then torch: no fork warning
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    bad = [c for c in args.cases if c not in ("planted", "null")]
    if bad:
        raise SystemExit(f"--cases {bad}: valid: planted, null")
    run(args)
    print((Path(args.output) / "summary.md").read_text())


if __name__ == "__main__":
    main()
