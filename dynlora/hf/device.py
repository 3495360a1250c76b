"""Which device a run trains on: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from dynlora.errors import DynloraError

DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> None:
    """A one-line error for a device name that is not valid, or for ``cuda`` where there is none."""
    if device not in DEVICES:
        raise DynloraError(f"device {device!r} is not valid; valid: {', '.join(DEVICES)} "
                           "(pick a GPU with CUDA_VISIBLE_DEVICES)")
    if device == "cuda" and not torch.cuda.is_available():
        raise DynloraError("device 'cuda' is not available here (torch sees no CUDA GPU); valid: auto, cpu")


def resolve_device(device: str = "auto") -> str:
    """``cpu`` or ``cuda`` for ``device``."""
    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
