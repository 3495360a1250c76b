"""``dynlora report RUN_DIR``: pictures and a table of where the rank went during a run.

Reads the run's ``history.jsonl`` (every controller event carries each module's rank), ``ranks.json``
and, for gated methods, ``gates.json``; writes PNGs into ``RUN_DIR/report/``:
``rank_heatmap.png`` (final rank, module type x layer), ``rank_by_type.png`` (total rank per module
type over steps), ``gates.png`` (distribution of the final gate values) and, for methods that choose which adapters
train, ``activity.png`` (adapters x selection events, and how often each was selected). Which of them
a run gets is its method's choice (``MethodSpec.report_panels``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dynlora.control.events import Event
from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.report.plots import parse_module_name, rank_heatmap, save_figure, short_names


def module_type(name: str, names: Sequence[str] | None = None) -> str:
    """The module's type: what follows its layer index (``attention.output.dense``, ``mlp.down_proj``)."""
    short = short_names(list(names or [name])).get(name, name)
    return parse_module_name(short)[1]


def rank_by_type(ranks: Mapping[str, int]) -> dict[str, int]:
    """Total rank per module type."""
    totals: dict[str, int] = {}
    names = list(ranks)
    for name, rank in ranks.items():
        typ = module_type(name, names)
        totals[typ] = totals.get(typ, 0) + int(rank)
    return totals


def rank_events(history: Sequence[Event]) -> list[Event]:
    """History events that carry every module's rank, in step order."""
    return [event for event in history if event.ranks is not None]


def type_gains(history: Sequence[Event]) -> list[dict[str, Any]]:
    """Per module type: total rank at the first and at the last rank event, and the change."""
    events = rank_events(history)
    if not events:
        return []
    first, last = rank_by_type(events[0].ranks or {}), rank_by_type(events[-1].ranks or {})
    rows = [{"type": t, "start": first.get(t, 0), "end": last.get(t, 0), "change": last.get(t, 0) - first.get(t, 0)}
            for t in dict.fromkeys([*first, *last])]
    return sorted(rows, key=lambda r: -r["change"])


def plot_rank_by_type(history: Sequence[Event], path: str | Path) -> None:
    """Total rank per module type against the optimizer step."""
    events = rank_events(history)
    steps = [event.step for event in events]
    series: dict[str, list[int]] = {}
    for event in events:
        for typ, total in rank_by_type(event.ranks or {}).items():
            series.setdefault(typ, []).append(total)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for typ, values in series.items():
        ax.plot(steps[: len(values)], values, marker="o", markersize=3, label=typ)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("total rank")
    ax.set_title("rank per module type")
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def plot_gates(gates: Mapping[str, Sequence[float]], path: str | Path) -> None:
    """Histogram of the final gate values, stacked by module type."""
    names = list(gates)
    by_type: dict[str, list[float]] = {}
    for name, values in gates.items():
        by_type.setdefault(module_type(name, names), []).extend(float(v) for v in values)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.hist(list(by_type.values()), bins=20, range=(0, 1), stacked=True, label=list(by_type))
    ax.set_xlabel("gate value c")
    ax.set_ylabel("ranks")
    ax.set_title(f"final gates ({sum(len(v) for v in by_type.values())} ranks)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def select_events(history: Sequence[Event]) -> list[Event]:
    """History events that chose the adapters that train (each names them)."""
    return [event for event in history if event.active is not None]


def plot_activity(history: Sequence[Event], names: Sequence[str], path: str | Path) -> None:
    """Activity map: adapters (rows) x selection events (columns), dark = trained; plus counts per adapter."""
    events = select_events(history)
    # (modules, events)
    grid = [[1.0 if name in set(event.active or ()) else 0.0 for event in events] for name in names]
    counts = [sum(r) for r in grid]
    short = short_names(list(names))
    labels = [short[n] for n in names]
    fig = Figure(figsize=(8 + 0.2 * len(events), max(3.0, 0.22 * len(names) + 1.2)))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(2, len(events)), 2]}, sharey=True)
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(events)), [str(event.step) for event in events], fontsize=7)
    ax.set_yticks(range(len(names)), labels, fontsize=6)
    ax.set_xlabel("selection at step")
    ax.set_title("adapters that train (dark)", fontsize=9)
    bx.barh(range(len(names)), counts, color="0.3")
    bx.set_xlabel("times selected")
    bx.set_title("selection counts", fontsize=9)
    save_figure(fig, path)


def read_history(path: Path) -> list[Event]:
    """``history.jsonl`` as events."""
    return [Event.from_row(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _heatmap(run: Path, out: Path, history: list[Event], ranks: dict[str, int]) -> list[Path]:
    if not ranks:
        return []
    rank_heatmap(ranks, out / "rank_heatmap.png", title=f"final rank per module (total {sum(ranks.values())})")
    return [out / "rank_heatmap.png"]


def _rank_by_type(run: Path, out: Path, history: list[Event], ranks: dict[str, int]) -> list[Path]:
    if not rank_events(history):
        return []
    plot_rank_by_type(history, out / "rank_by_type.png")
    (out / "rank_by_type.json").write_text(json.dumps(type_gains(history), indent=1) + "\n")
    return [out / "rank_by_type.png", out / "rank_by_type.json"]


def _activity(run: Path, out: Path, history: list[Event], ranks: dict[str, int]) -> list[Path]:
    if not select_events(history):
        return []
    plot_activity(history, list(ranks), out / "activity.png")
    return [out / "activity.png"]


def _gates(run: Path, out: Path, history: list[Event], ranks: dict[str, int]) -> list[Path]:
    if not (run / "gates.json").is_file():
        return []
    plot_gates(json.loads((run / "gates.json").read_text()), out / "gates.png")
    return [out / "gates.png"]


# panel name -> drawer; a method names the panels beyond the heatmap it wants (``MethodSpec.report_panels``)
PANELS = {"rank_heatmap": _heatmap, "rank_by_type": _rank_by_type, "activity": _activity, "gates": _gates}


def _panels_of(run: Path, method: str | None) -> tuple[str, ...]:
    """The heatmap plus the method's panels; every panel when the method is not known."""
    if method is None and (run / "run.json").is_file():
        method = json.loads((run / "run.json").read_text()).get("options", {}).get("method")
    if method is None:
        return tuple(PANELS)
    try:
        return ("rank_heatmap", *registry.get(method).report_panels)
    except DynloraError:  # a method this installation does not have: draw what the files allow
        return tuple(PANELS)


def write_report(run_dir: str | Path, method: str | None = None) -> list[Path]:
    """Draw the run's pictures into ``run_dir/report``; returns the files written.

    ``method`` (default: the one in ``run.json``) chooses the panels; each is drawn if the files hold its data.
    """
    run = Path(run_dir)
    if not (run / "history.jsonl").is_file() or not (run / "ranks.json").is_file():
        raise DynloraError(f"{str(run)!r} is not a dynlora run folder (needs history.jsonl and ranks.json)")
    out = run / "report"
    history = read_history(run / "history.jsonl")
    ranks = json.loads((run / "ranks.json").read_text())
    written: list[Path] = []
    for panel in _panels_of(run, method):
        written += PANELS[panel](run, out, history, ranks)
    return written


def gains_table(run_dir: str | Path) -> str:
    """A plain-text table of rank per module type, first vs last event."""
    rows = type_gains(read_history(Path(run_dir) / "history.jsonl"))
    lines = [f"{'module type':32} {'start':>6} {'end':>6} {'change':>7}"]
    lines += [f"{r['type']:32} {r['start']:6d} {r['end']:6d} {r['change']:+7d}" for r in rows]
    return "\n".join(lines)
