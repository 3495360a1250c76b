"""``dynlora compare --budgets 1,2,4,8``: the compare at every budget, then one map of all of them.

Budget ``b`` is an average rank of ``b`` per module, counted in ``--budget-unit`` (plain LoRA's rank, or
its parameters / FLOPs at that rank). Each budget is an ordinary compare folder, ``OUT/budget-<b>/``,
resumable like any other; ``OUT/sweep.md`` gives one table per budget and, per method and budget,
whether it stands above, on or below LoRA's front (the compare baseline, PEFT's own LoRA);
``OUT/pareto_params.png`` and ``OUT/pareto_flops.png`` draw the test metric against trainable
parameters and adapter FLOPs per token.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.tools.compare import options_from_args, run_compare, split_method
from dynlora.tools.front import Point, points, position
from dynlora.tools.summary import headline_metric

COSTS = (("trainable_params", "trainable parameters", "params"), ("adapter_flops", "adapter FLOPs / token", "flops"))


def parse_budgets(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8): whole average ranks, each once."""
    try:
        budgets = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise DynloraError(f"budgets {text!r} must be comma-separated whole numbers, e.g. 1,2,4,8") from None
    if not budgets or min(budgets) < 1 or len(set(budgets)) != len(budgets):
        raise DynloraError(f"budgets {text!r} must be distinct whole numbers >= 1, e.g. 1,2,4,8")
    return budgets


def sweep_from_args(args: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    """``dynlora compare --budgets``: check every flag before any cell trains, then ``run_sweep``."""
    budgets = parse_budgets(args.budgets)
    check_front_method([m.strip() for m in args.methods.split(",") if m.strip()])
    options_from_args(argparse.Namespace(**{**vars(args), "rank": budgets[0]}))  # bad flags: one line, now
    return run_sweep(args, budgets)


def run_sweep(args: argparse.Namespace, budgets: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Every budget's compare (missing cells only), then sweep.md and the Pareto plots."""
    root = Path(getattr(args, "output_dir", None) or "runs/sweep")
    rows = {}
    for budget in budgets:
        each = argparse.Namespace(**{**vars(args), "rank": budget, "output_dir": str(root / f"budget-{budget}")})
        rows[budget] = [dict(r) for r in run_compare(options_from_args(each))]
    metric = headline_metric([r for group in rows.values() for r in group])
    meta = json.loads((root / f"budget-{budgets[0]}" / "meta.json").read_text())
    (root / "sweep.md").write_text(sweep_markdown(rows, metric, getattr(args, "budget_unit", "rank"), meta))
    for key, label, name in COSTS:
        pareto_plot(points(rows, key, metric), root / f"pareto_{name}.png", label, metric)
    print(f"dynlora: sweep over budgets {', '.join(map(str, budgets))} written to {root}")
    return rows


def sweep_markdown(rows: Mapping[int, Sequence[Mapping[str, Any]]], metric: str, unit: str,
                   meta: Mapping[str, Any] | None = None) -> str:
    """One table per budget, then each method's place against LoRA's front per cost; ``meta`` (a compare's
    meta.json) gives the command, machine and date."""
    higher = metric != "eval_loss"
    settings = (meta or {}).get("settings", {})
    task = settings.get("task") or settings.get("dataset")
    lines = [f"# Budget sweep{': ' + task if task else ''} ({metric} on the {settings.get('eval_split', 'test')} "
             f"split; budget = average rank per module, counted in {unit})", ""]
    if meta:
        machine = meta.get("machine", {})
        lines += [f"- command: `{meta.get('command', '?')}`",
                  f"- machine: {machine.get('device', '?')}, {machine.get('cpu_count', '?')} CPUs, "
                  f"torch {machine.get('torch', '?')}; started {meta.get('date', '?')}",
                  "- points: mean ± std over seeds; a method is above / below the front when it differs from "
                  "it by more than the larger of its std and the front's (interpolated between LoRA's points "
                  "like the front itself)", ""]
    for budget, group in sorted(rows.items()):
        lines += [f"## Budget {budget}", "", f"| method | {metric} | trainable params | adapter FLOPs/token | seeds |",
                  "|---|---|---|---|---|"]
        for p_params, p_flops in zip(points({budget: group}, "trainable_params", metric),
                                     points({budget: group}, "adapter_flops", metric)):
            lines.append(f"| {p_params.method} | {p_params.metric:.4f} ± {p_params.metric_std:.4f} | "
                         f"{p_params.cost:,.0f} | {p_flops.cost:,.0f} | {p_params.seeds} |")
        lines.append("")
    for key, label, _ in COSTS:
        pts = points(rows, key, metric)
        base = front_of(p.method for p in pts)
        front = [p for p in pts if p.method == base]
        if not front:
            continue
        methods = [m for m in dict.fromkeys(p.method for p in pts) if m != base]
        budgets = sorted(rows)
        lines += [f"## Against LoRA's front in {label}", "",
                  "| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method in methods:
            cells = []
            for b in budgets:
                found = [p for p in pts if p.method == method and p.budget == b]
                cells.append(position(found[0], front, higher) if found else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def pareto_plot(pts: Sequence[Point], path: Path, label: str, metric: str) -> None:
    """Each method's points over budgets (mean ± std), LoRA's front as a line."""
    from matplotlib.figure import Figure

    from dynlora.report.plots import save_figure

    fig = Figure(figsize=(6.8, 4.6))
    ax = fig.add_subplot()
    base = front_of(p.method for p in pts)
    for i, method in enumerate(dict.fromkeys(p.method for p in pts)):
        mine = sorted((p for p in pts if p.method == method), key=lambda p: p.cost)
        front = method == base
        ax.errorbar([p.cost for p in mine], [p.metric for p in mine], yerr=[p.metric_std for p in mine],
                    fmt="-o" if front else "os^Dv<>p*h"[i % 10], color="black" if front else f"C{i % 10}",
                    capsize=3, markersize=6, elinewidth=1, linewidth=1.5 if front else 0, label=f"{method}" + (" (front)" if front
                                                                                                  else ""))
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (log)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {label}, every budget (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def front_of(labels: Iterable[str]) -> str | None:
    """The label that draws LoRA's front: the baseline itself, else the baseline with its own options
    (``BASELINE@lr=X``: each method at the learning rate chosen for it on validation), the first given."""
    labels = list(labels)
    if registry.baseline() in labels:
        return registry.baseline()
    return next((label for label in labels if split_method(label)[0] == registry.baseline()), None)


def check_front_method(methods: Sequence[str]) -> None:
    """The map needs LoRA's front: a one-line error when the sweep leaves it out."""
    if front_of(methods) is None:
        raise DynloraError(f"a budget sweep draws {registry.baseline()!r}'s front: add it to --methods "
                           f"(given: {', '.join(methods)}; valid: {', '.join(registry.names())})")
