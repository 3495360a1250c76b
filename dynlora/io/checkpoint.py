"""Save and resume a dynamic run: ranks first, then weights, then optimizer state.

A checkpoint folder holds ``controller.json`` (step, every module's rank, history, method state, the
decision generator), ``adapter_state.safetensors`` (every trainable tensor and adapter buffer at its
current shape) and ``optimizer.pt`` and ``rng.pt`` (torch's RNG states, for dropout), both loaded
with ``weights_only=True``. It is written to a temporary folder and renamed, so a kill during a save
leaves the previous checkpoint intact. (``dynlora train`` checkpoints through the HF Trainer instead:
see ``hf/trainer.py``; they share ``adapter_state.safetensors`` and ``controller.json``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dynlora.control.controller import Controller
from dynlora.core.inject import adapters
from dynlora.core.sharded import is_sharded, whole, write
from dynlora.core.surgery import unwrap_optimizer
from dynlora.errors import DynloraError

CONTROLLER_FILE = "controller.json"
WEIGHTS_FILE = "adapter_state.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
COMPLETE_MARKER = "dynlora-complete"  # written last into a Trainer checkpoint folder: it is whole, and its files
CHECKPOINT_PREFIX = "checkpoint-"  # the HF Trainer's folder name for the checkpoint after N optimizer steps


def checkpoint_folder(root: str | os.PathLike, step: int) -> Path:
    """The Trainer checkpoint under ``root`` after ``step`` optimizer steps: ``root/checkpoint-<step>``."""
    return Path(root) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The optimizer step a ``checkpoint-<step>`` folder was saved at (None: not such a folder)."""
    name = Path(folder).name
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if name.startswith(CHECKPOINT_PREFIX) and tail.isdigit() else None


def rng_state() -> dict[str, Any]:
    """torch's global RNG states (dropout draws from them), CPU and every CUDA device."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_names(model: nn.Module) -> set[str]:
    """The state-dict keys of ``trainable_state``."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return names | {f"{name}.{key}" for name, layer in adapters(model).items() for key in layer.state_dict()
                    if not key.startswith("base.")}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter plus every adapter tensor (switched-off adapters and buffers too)."""
    names = trainable_names(model)
    # a tensor an engine shards is read whole: under FSDP2 every process calls this, in the same order
    return {k: whole(v.detach()).contiguous().cpu() for k, v in model.state_dict().items() if k in names}


def controller_state_json(controller: Controller) -> dict[str, Any]:
    state = controller.state_dict()
    state["generator"] = state["generator"].tolist()
    return state


def load_controller_json(controller: Controller, state: dict[str, Any]) -> None:
    state = dict(state)
    state["generator"] = torch.tensor(state["generator"], dtype=torch.uint8)
    controller.load_state_dict(state)


def save_controller_state(folder: Path, controller: Controller) -> None:
    """Write ``folder/controller.json`` atomically (a kill leaves the old file or none, never half of one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CONTROLLER_FILE}.tmp"
    tmp.write_text(json.dumps(controller_state_json(controller)))
    os.replace(tmp, folder / CONTROLLER_FILE)


def load_controller_state(folder: Path, controller: Controller) -> None:
    """Read ``folder/controller.json`` into ``controller`` (every module takes its saved rank)."""
    path = folder / CONTROLLER_FILE
    if not path.is_file():
        raise DynloraError(f"{folder} has no {CONTROLLER_FILE}: not a checkpoint of a dynlora run")
    load_controller_json(controller, json.loads(path.read_text()))


def replace_folder(tmp: Path, final: Path) -> None:
    """Move a finished folder into place by rename, replacing what was there (never half of either)."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        old.rmdir()
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, controller: Controller,
                    optimizer: object | None = None) -> Path:
    """Write a checkpoint atomically (temporary folder, then rename over any previous one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_controller_state(tmp, controller)
        save_file(trainable_state(model), str(tmp / WEIGHTS_FILE))
        if optimizer is not None:
            torch.save(unwrap_optimizer(optimizer).state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(rng_state(), tmp / RNG_FILE)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder: str | os.PathLike, model: nn.Module, controller: Controller,
                    optimizer: object | None = None) -> None:
    """Restore ranks (controller state), then weights, then optimizer state, in that order."""
    folder = Path(folder)
    load_controller_state(folder, controller)
    load_trainable_state(model, folder)
    if optimizer is not None and (folder / OPTIMIZER_FILE).is_file():
        state = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
        unwrap_optimizer(optimizer).load_state_dict(state)
    if (folder / RNG_FILE).is_file():
        set_rng_state(torch.load(folder / RNG_FILE, weights_only=True))


def load_trainable_state(model: nn.Module, folder: str | os.PathLike) -> None:
    """Load ``trainable_state`` back from ``folder/adapter_state.safetensors``; every key and shape must fit."""
    folder = Path(folder)
    weights = load_file(str(folder / WEIGHTS_FILE))
    unexpected = []
    own = model.state_dict()
    resizable = tuple(f"{name}." for name in adapters(model))  # an adapter takes the saved rank as it loads
    for key in weights:
        if key not in own:
            unexpected.append(key)
        elif own[key].shape != weights[key].shape and not key.startswith(resizable):
            raise DynloraError(f"{folder}: {key} has shape {tuple(weights[key].shape)}, "
                               f"the model has {tuple(own[key].shape)}")
    names = trainable_names(model)
    missing = [k for k in own if k in names and k not in weights]
    if missing or unexpected:
        raise DynloraError(f"{folder}: checkpoint does not fit the model (missing {missing[:2]}, "
                           f"unexpected {unexpected[:2]})")
    own_sharded = [k for k, v in own.items() if k in weights and is_sharded(v)]
    model.load_state_dict({k: v for k, v in weights.items() if k not in own_sharded}, strict=False)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for key in own_sharded:  # each process writes its own shard of the whole saved tensor
        write(tensors[key], weights[key])


def file_manifest(folder: Path) -> dict[str, list]:
    """Every file under ``folder`` but the completion marker: its path relative to ``folder``, its size
    in bytes and its SHA-256."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        files[path.relative_to(folder).as_posix()] = [path.stat().st_size, digest.hexdigest()]
    return files


def mark_complete(folder: Path, step: int) -> None:
    """Write ``folder``'s completion marker (atomically, last): the step and the manifest of its files."""
    tmp = folder / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": file_manifest(folder)}) + "\n")
    os.replace(tmp, folder / COMPLETE_MARKER)


def checkpoint_damage(folder: Path) -> str | None:
    """Why a complete checkpoint's files are not the ones its marker recorded (None: they are, or the
    marker predates manifests)."""
    try:
        expected = json.loads((folder / COMPLETE_MARKER).read_text()).get("files")
    except (ValueError, AttributeError):  # an old marker holds only the step number
        return None
    if not expected:
        return None
    found = file_manifest(folder)
    for name, (size, digest) in expected.items():
        if name not in found:
            return f"{name} is missing"
        if found[name][0] != size:
            return f"{name} has {found[name][0]} bytes, {size} were written"
        if found[name][1] != digest:
            return f"{name} does not match the SHA-256 recorded when it was written"
    return None


def last_complete_checkpoint(folder: Path, report: Callable[[str], None] | None = None) -> Path | None:
    """The newest ``checkpoint-N`` under ``folder`` that is complete and undamaged.

    Incomplete ones (cut short by a kill or a full disk) are removed. A damaged one (a file changed,
    truncated or gone since its marker was written) is renamed ``damaged-checkpoint-N``, out of the
    Trainer's sight but kept until the run finishes, and ``report`` is told which file and why.
    """
    found = sorted((p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_step(p) is not None),
                   key=checkpoint_step)
    complete = [p for p in found if (p / COMPLETE_MARKER).is_file()]
    for p in found:
        if p not in complete:
            shutil.rmtree(p, ignore_errors=True)
    for checkpoint in reversed(complete):
        why = checkpoint_damage(checkpoint)
        if why is None:
            return checkpoint
        aside = checkpoint.with_name(f"damaged-{checkpoint.name}")
        shutil.rmtree(aside, ignore_errors=True)
        checkpoint.rename(aside)
        if report is not None:
            report(f"dynlora: warning: {checkpoint} is damaged ({why}); skipped (kept as {aside.name})")
    return None
