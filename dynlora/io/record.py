"""One process's run record in a checkpoint (the loss so far, callbacks' state): JSON, and any tensors in
it in a safetensors file beside it, so that a resumed run reports and decides as a straight one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

RECORD_FILE = "dynlora-record-{process}.json"
TENSORS_FILE = "dynlora-record-{process}.safetensors"
_TENSOR = "__tensor__"


def _lift(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` with every tensor replaced by a reference into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().contiguous().cpu()
        return {_TENSOR: path}
    if isinstance(value, dict):
        return {str(k): _lift(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lift(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _lower(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {k: _lower(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower(v, tensors) for v in value]
    return value


def write_record(folder: Path, process: int, record: dict[str, Any]) -> None:
    """Write ``record`` (JSON values and tensors, nested in dicts and lists) for ``process`` into ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    lifted = _lift(record, "", tensors)
    if tensors:
        save_file(tensors, str(folder / TENSORS_FILE.format(process=process)))
    (folder / RECORD_FILE.format(process=process)).write_text(json.dumps(lifted) + "\n")


def read_record(folder: Path, process: int) -> dict[str, Any] | None:
    """The record ``write_record`` wrote (tensors on the CPU), or None when the checkpoint has none."""
    path = folder / RECORD_FILE.format(process=process)
    if not path.is_file():
        return None
    tensors_path = folder / TENSORS_FILE.format(process=process)
    tensors = load_file(str(tensors_path)) if tensors_path.is_file() else {}
    return _lower(json.loads(path.read_text()), tensors)
