"""Load a plain PEFT LoRA adapter folder into dynlora adapters, to go on training."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dynlora.core.inject import AdapterConfig, head_names, inject
from dynlora.errors import DynloraError
from dynlora.io.adapter_file import CONFIG_NAME, PREFIX, WEIGHTS_NAME, check_adapter_folder, read_config

_PREFIX = PREFIX


def _read_config(folder: Path) -> LoraConfig:
    path = folder / CONFIG_NAME
    raw = read_config(folder)
    if raw.get("peft_type") != "LORA":
        raise DynloraError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported; only LORA")
    config = LoraConfig.from_pretrained(str(folder))
    if config.use_dora or config.use_rslora:
        raise DynloraError(f"{path}: use_dora / use_rslora adapters are not supported")
    return config


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise DynloraError(f"{folder}: {WEIGHTS_NAME} is missing (only safetensors weights are loaded)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DynloraError(f"{path} is not a readable safetensors file: {err}") from None


def load_peft(model: nn.Module, folder: str | os.PathLike, use_gate: bool = False) -> dict:
    """Inject adapters from a PEFT LoRA folder into ``model`` (a fresh base model) to go on training.

    Ranks come from ``rank_pattern``, scales from ``alpha_pattern``; the head weights are loaded too.
    The folder is checked first (``adapter_file.check_adapter_folder``): safetensors only, every tensor
    fits ``model``. Returns the adapters by module name.
    """
    folder = Path(folder)
    check_adapter_folder(folder, model)  # before anything is read or injected
    config = _read_config(folder)
    weights = _read_weights(folder)
    targets = config.target_modules
    targets = tuple(sorted(targets)) if isinstance(targets, (set, list, tuple)) else targets
    names = [k[len(_PREFIX):-len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")]
    ranks = {n: weights[f"{_PREFIX}{n}.lora_A.weight"].shape[0] for n in names}
    alphas = {n: float(config.alpha_pattern.get(n, config.lora_alpha)) for n in names}
    layers = inject(model, AdapterConfig(
        rank=config.r, alpha=float(config.lora_alpha), dropout=float(config.lora_dropout),
        targets=tuple(names) if names else targets, use_gate=use_gate, rank_pattern=ranks,
        scale_pattern={n: alphas[n] / max(ranks[n], 1) for n in names}))
    with torch.no_grad():
        for name, layer in layers.items():
            a = weights.get(f"{_PREFIX}{name}.lora_A.weight")
            b = weights.get(f"{_PREFIX}{name}.lora_B.weight")
            if a is None or b is None:
                raise DynloraError(f"{folder}: no weights for adapter {name}")
            layer.lora_A.copy_(a)  # shapes were checked against the model by check_adapter_folder
            layer.lora_B.copy_(b)
        for head in head_names(model):
            module = model.get_submodule(head)
            for pname, p in module.named_parameters():
                key = f"{_PREFIX}{head}.{pname}"
                if key in weights:
                    p.copy_(weights[key])
    return layers
