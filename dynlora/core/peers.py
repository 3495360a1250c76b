"""The processes of a data-parallel run, and which of them has died.

When one process of a run dies, the others learn it two ways: a collective fails (gloo: the dead
peer's connection closed; NCCL: the collective times out after ``ddp_timeout``), or the launcher
(torchrun, accelerate) stops them with SIGTERM. Neither says which process died, so every process
shares its host and pid at the start (``gather_peers``), and a survivor checks which of them on its own
host are gone (``gone``) to name the dead one.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass(frozen=True)
class Peer:
    """One process of the run: its rank, its host and its pid."""

    rank: int
    host: str
    pid: int


def gather_peers() -> tuple[Peer, ...]:
    """Every process's (rank, host, pid), in rank order (a collective: every process calls it)."""
    mine = (socket.gethostname(), os.getpid())
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, mine)
    return tuple(Peer(rank, host, pid) for rank, (host, pid) in enumerate(found))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its launcher has not reaped yet is a zombie: dead all the same
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def gone(peers: Sequence[Peer]) -> list[Peer]:
    """The peers on this host whose process no longer runs (other hosts' cannot be checked from here)."""
    host = socket.gethostname()
    return [p for p in peers if p.host == host and p.pid != os.getpid() and not _alive(p.pid)]


@contextmanager
def on_sigterm(handler: Callable[[], None]) -> Iterator[None]:
    """Call ``handler`` (which raises) when SIGTERM arrives, within the block; the old handler after."""
    def handle(signum: int, frame: Any) -> None:
        handler()

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
