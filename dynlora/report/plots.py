"""Plots for ``compare`` and ``report``: a metric against trainable parameters, and rank heatmaps.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch), so importing this module never changes a notebook's or a GUI's backend.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

OTHER = "–"  # heatmap column of modules whose name has no layer index


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def save_figure(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def metric_vs_params(rows: Iterable[Mapping[str, Any]], path: str | Path, metric: str = "accuracy") -> None:
    """One point per method: mean ``metric`` against mean trainable parameters, std error bars over seeds."""
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(str(row["method"]), []).append(row)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for i, (method, group) in enumerate(by_method.items()):
        x, xerr = _mean_std([float(r["trainable_params"]) for r in group])
        y, yerr = _mean_std([float(r[metric]) for r in group])
        ax.errorbar([x], [y], xerr=[xerr], yerr=[yerr], fmt="os^Dv<>p*h"[i % 10], capsize=4, color=f"C{i % 10}",
                    markersize=7, label=f"{method} (n={len(group)}): {y:.4f}")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs trainable parameters (mean ± std over seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k" if abs(v) >= 1e4 else f"{v:,.0f}"))
    ax.margins(x=0.15, y=0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def parse_module_name(name: str) -> tuple[int | None, str, str]:
    """(layer, type, prefix): the layer is the first all-digit dotted component, the type what follows it.

    ``bert.encoder.layer.3.attention.self.query`` -> (3, "attention.self.query", "bert.encoder.layer");
    a name without an integer component -> (None, name, "").
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            prefix = ".".join(parts[:i])
            return int(part), ".".join(parts[i + 1:]) or prefix, prefix
    return None, name, ""


def short_names(names: list[str]) -> dict[str, str]:
    """Drop the leading non-integer dotted components every name shares (e.g. PEFT's ``base_model.model.``)."""
    split = [n.split(".") for n in names]
    common = 0
    while not split[0][common].isdigit() and all(len(s) > common + 1 and s[common] == split[0][common]
                                                 for s in split):
        common += 1
    return {n: ".".join(s[common:]) for n, s in zip(names, split)}


def rank_grid(ranks: Mapping[str, int]) -> tuple[list[str], list[int | str], dict[tuple[str, int | str], int]]:
    """(row types, column layers, {(type, layer): rank}) for a heatmap; no-layer names go to column ``OTHER``."""
    short = short_names(list(ranks))
    parsed = {name: parse_module_name(short[name]) for name in ranks}
    keys = [(typ, OTHER if layer is None else layer) for layer, typ, _ in parsed.values()]
    if len(set(keys)) < len(keys):  # e.g. encoder and decoder blocks: keep the prefix in the type
        keys = [(f"{prefix}.{typ}" if prefix else typ, OTHER if layer is None else layer)
                for layer, typ, prefix in parsed.values()]
    cells: dict[tuple[str, int | str], int] = {}
    for key, rank in zip(keys, ranks.values()):
        cells[key] = cells.get(key, 0) + int(rank)
    types = list(dict.fromkeys(k[0] for k in keys))
    layers: list[int | str] = sorted({k[1] for k in keys if isinstance(k[1], int)})
    if any(k[1] == OTHER for k in keys):
        layers.append(OTHER)
    return types, layers, cells


def rank_heatmap(ranks: dict[str, int], path: str | Path, title: str = "") -> None:
    """Draw module type (rows) x layer (columns) ranks from full module names, and save it to ``path``."""
    if not ranks:
        raise ValueError("rank_heatmap needs at least one module")
    types, layers, cells = rank_grid(ranks)
    grid = [[cells.get((t, layer), math.nan) for layer in layers] for t in types]  # (types, layers)
    fig = Figure(figsize=(max(4.0, 0.55 * len(layers) + 3.5), max(2.5, 0.4 * len(types) + 1.5)))
    ax = fig.add_subplot()
    finite = [v for row in grid for v in row if not math.isnan(v)]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(1, max(finite)))
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_yticks(range(len(types)), types)
    ax.set_xlabel("layer" + (f" ({OTHER}: no layer index)" if OTHER in layers else ""))
    if len(types) * len(layers) <= 600:
        top = max(1, max(finite))
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if value > 0.6 * top else "white")
    fig.colorbar(image, ax=ax, label="rank")
    ax.set_title(title or f"rank per module (total {sum(int(v) for v in ranks.values())})", fontsize=10)
    save_figure(fig, path)
