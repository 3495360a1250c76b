"""Which held-out split a run is scored on: ``test`` to report, ``validation`` to choose settings on."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

EVAL_SPLITS = ("test", "validation")

D = TypeVar("D")


def scored_on(data: D, split: str) -> D:
    """``data`` with ``split`` in the place of its test split, so every score of the run (the final metrics,
    the input gate's fold-in check) is of that split; the test split is then never looked at."""
    if split == "test":
        return data
    return dataclasses.replace(data, test=getattr(data, split))  # type: ignore[type-var]
