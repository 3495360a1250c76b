"""The schema of a compare folder's ``results.jsonl``: one row per (method, seed) cell."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dynlora.training.records import GATE_KEYS, QUALITY_KEYS, RUN_KEYS, GateExport, Quality, RunCost, RunMetrics


class CompareRow(RunCost, Quality, GateExport, total=False):
    """A cell's row: the run's cost (every row), its task metrics and gate export (where it has them)."""

    method: str  # as given to compare: ``name[:variant][@lr=...]``
    seed: int
    cell: str
    invocation: str
    device: str
    finished: str


def make_row(method: str, seed: int, metrics: RunMetrics | dict[str, Any], cell: str, invocation: str,
             device: str) -> CompareRow:
    """The row of a finished cell: every ``RUN_KEYS`` value, and the quality / gate keys the run reported."""
    row: dict[str, Any] = {"method": method, "seed": seed, **{k: metrics[k] for k in RUN_KEYS if k in metrics}}
    row.update({k: metrics[k] for k in QUALITY_KEYS + GATE_KEYS if k in metrics})
    row.update(cell=cell, invocation=invocation, device=device, finished=datetime.now().isoformat(timespec="seconds"))
    return row  # type: ignore[return-value]
