"""Export dynlora adapters as a standard PEFT LoRA folder (``io.load`` reads one back).

The folder is what ``peft.PeftModel.save_pretrained`` writes: ``adapter_config.json`` (a real
``peft.LoraConfig``, saved by peft) and ``adapter_model.safetensors`` with PEFT's key names. Gates and
scales are folded into B, and each module gets ``alpha == rank`` through ``alpha_pattern``, so plain
PEFT computes exactly dynlora's update. Modules pruned to rank 0 are left out of ``target_modules``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from torch import nn

from dynlora.core.distributed import is_main_process
from dynlora.core.inject import adapters, head_names, peft_task_type
from dynlora.core.linear import compute_dtype
from dynlora.core.sharded import is_sharded, whole
from dynlora.errors import DynloraError
from dynlora.io.adapter_file import EXPORT_DTYPES, PREFIX, WEIGHTS_NAME, check_export_dtype
from dynlora.io.input_gates import input_gated

_PREFIX = PREFIX
def _base_name(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def export_state_dict(model: nn.Module, gate_means: Mapping[str, float] | None = None,
                      dtype: str = "base") -> dict[str, torch.Tensor]:
    """PEFT-named tensors: folded lora_A / lora_B of every non-empty adapter (in ``dtype``, see
    ``EXPORT_DTYPES``; folded in the adapter's own precision, rounded once) plus the task head as it is.

    An input-gated adapter needs ``gate_means`` (``calibrate_input_gates``): its mean gate is folded
    into B, an approximation (the PEFT adapter then applies the average gate to every token).
    """
    check_export_dtype(dtype)
    gated = input_gated(model)
    if gated and (gate_means is None or set(gated) - set(gate_means)):
        raise DynloraError(f"{len(gated)} adapters have an input-dependent gate g(x), which standard PEFT LoRA "
                           "cannot express; export with a calibration set to fold each gate's mean into B "
                           "(an approximation, its logits error is reported), or keep dynlora's exact save")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapters(model).items():
        if layer.rank == 0:
            continue
        if layer.merged:
            raise DynloraError(f"adapter {name} is merged; unmerge before exporting (after a training loop of "
                               "your own, controller.finish() unfolds the adapters it switched off)")
        b = layer.live_slots(layer.folded_b().detach(), 1)  # within a fixed capacity: the live ranks only
        if layer.has_input_gate:
            b = b * gate_means[name]  # type: ignore[index]
        to = EXPORT_DTYPES[dtype] or compute_dtype(layer.base)
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = layer.live_slots(layer.lora_A.detach()).to(to)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = b.to(to)
    for head in head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            tensors[f"{_PREFIX}{head}.{pname}"] = whole(p.detach())
    return {k: v.contiguous().cpu().clone() for k, v in tensors.items()}


def peft_config(model: nn.Module, dropout: float = 0.0) -> LoraConfig:
    """The ``peft.LoraConfig`` that describes the model's adapters at their current ranks."""
    ranks = {name: layer.rank for name, layer in adapters(model).items() if layer.rank > 0}
    if not ranks:
        raise DynloraError("nothing to export: the model has no adapter with rank > 0")
    values = list(ranks.values())
    default_r = max(set(values), key=values.count)
    pattern = {n: r for n, r in ranks.items() if r != default_r}
    task = peft_task_type(model)
    return LoraConfig(
        task_type=task,
        r=default_r,
        lora_alpha=default_r,  # scale 1: the real scale is folded into B
        target_modules=list(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=dropout,
        fan_in_fan_out=any(layer.fan_in_fan_out for layer in adapters(model).values()),
        modules_to_save=head_names(model) or None,
        base_model_name_or_path=_base_name(model),
    )


def export_peft(model: nn.Module, folder: str | os.PathLike, dropout: float = 0.0,
                gate_means: Mapping[str, float] | None = None, dtype: str = "base") -> Path:
    """Write a plain PEFT LoRA adapter folder (adapter weights in ``dtype``); written to a temporary
    folder, then renamed.

    Input-gated adapters need ``gate_means`` (see ``export_state_dict``); without them this refuses.
    Adapters that an engine shards (FSDP2) are read whole, a collective: every process calls this, and
    the main process writes the folder.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise DynloraError(f"export folder {folder} exists and is not empty; choose a new folder")
    tensors = export_state_dict(model, gate_means, dtype)  # refuses before anything is written
    if not is_main_process() and any(is_sharded(layer.lora_A) for layer in adapters(model).values()):
        return folder  # every process took part in reading the shards; one writes
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        peft_config(model, dropout).save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
