"""The history's one record type: what happened at a step, serialised once to ``history.jsonl``.

A rank event (``init``, a method's decision, ``end``) carries every module's rank and total; a
decision also the method's own detail record (flattened into the row); ``log`` rows carry the
Trainer's logged values. Rows read back through ``Event.from_row``; an ``Event`` also answers
``event["key"]`` like the row it writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_CORE = ("step", "event", "method", "total_rank", "ranks", "active", "replicas_agree")


@dataclass(frozen=True)
class Event:
    """One history row."""

    step: int
    event: str
    method: str | None = None
    ranks: dict[str, int] | None = None  # every module's rank after the event (None: a log line)
    active: tuple[str, ...] | None = None  # the adapters that train from this event on, when it chose them
    replicas_agree: int | None = None  # processes whose adapter state was checked equal after the event
    detail: Mapping[str, Any] = field(default_factory=dict)  # the method's record, or the logged values

    @property
    def total_rank(self) -> int | None:
        return sum(self.ranks.values()) if self.ranks is not None else None

    def row(self) -> dict[str, Any]:
        """The JSON object written to ``history.jsonl``."""
        out: dict[str, Any] = {"step": self.step, "event": self.event}
        if self.ranks is not None:
            out.update(method=self.method, total_rank=self.total_rank, ranks=dict(self.ranks))
        if self.active is not None:
            out["active"] = list(self.active)
        if self.replicas_agree is not None:
            out["replicas_agree"] = self.replicas_agree
        out.update(self.detail)
        return out

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Event":
        """Read a row written by ``row()``."""
        ranks = row.get("ranks")
        active = row.get("active")
        return cls(step=int(row["step"]), event=str(row["event"]), method=row.get("method"),
                   ranks={k: int(v) for k, v in ranks.items()} if isinstance(ranks, Mapping) else None,
                   active=tuple(active) if isinstance(active, list) else None,
                   replicas_agree=row.get("replicas_agree"),
                   detail={k: v for k, v in row.items() if k not in _CORE})

    @classmethod
    def of(cls, step: int, event: str, method: str | None, ranks: Mapping[str, int] | None,
           detail: Any = None, active: tuple[str, ...] | None = None) -> "Event":
        """An event with ``detail`` given as a dataclass (None fields left out) or a mapping."""
        if dataclasses.is_dataclass(detail):
            detail = {k: v for k, v in dataclasses.asdict(detail).items() if v is not None}
        clash = set(detail or {}) & set(_CORE)
        if clash:  # the detail is flattened into the row: it must not shadow the event's own fields
            raise ValueError(f"event {event!r}: detail fields {sorted(clash)} are reserved")
        return cls(step=step, event=event, method=method, ranks=dict(ranks) if ranks is not None else None,
                   active=active, detail=dict(detail or {}))

    # mapping-style reads of the row, for code and tests that look at history rows
    def __getitem__(self, key: str) -> Any:
        return self.row()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.row()

    def get(self, key: str, default: Any = None) -> Any:
        return self.row().get(key, default)

    def keys(self) -> Iterator[str]:
        return iter(self.row())


def rank_scalars(before: Event, after: Event, active: tuple[str, ...] | None = None) -> dict[str, float]:
    """What a logger plots after a rank event: total rank, ranks grown and pruned since ``before``, the
    adapters that train, and each module type's share of the rank (``q_proj``: the name's last part)."""
    old, new = before.ranks or {}, after.ranks or {}
    total = sum(new.values())
    out: dict[str, float] = {
        "dynlora/total_rank": float(total),
        "dynlora/ranks_grown": float(sum(max(0, r - old.get(n, 0)) for n, r in new.items())),
        "dynlora/ranks_pruned": float(sum(max(0, r - new.get(n, 0)) for n, r in old.items())),
        "dynlora/active_adapters": float(len(active) if active is not None else sum(r > 0 for r in new.values())),
    }
    kinds: dict[str, int] = {}
    for name, rank in new.items():
        kinds[name.rsplit(".", 1)[-1]] = kinds.get(name.rsplit(".", 1)[-1], 0) + rank
    for kind, rank in sorted(kinds.items()):
        out[f"dynlora/rank_share/{kind}"] = rank / total if total else 0.0
    return out
