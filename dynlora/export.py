"""Export dynlora adapters as a standard PEFT LoRA folder, and load such a folder back.

The folder is what ``peft.PeftModel.save_pretrained`` writes: ``adapter_config.json`` (a real
``peft.LoraConfig``, saved by peft) and ``adapter_model.safetensors`` with PEFT's key names. Gates and
scales are folded into B, and each module gets ``alpha == rank`` through ``alpha_pattern``, so plain
PEFT computes exactly dynlora's update. Modules pruned to rank 0 are left out of ``target_modules``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dynlora.adapter_file import CONFIG_NAME, PREFIX, WEIGHTS_NAME, check_adapter_folder, read_config
from dynlora.errors import DynloraError
from dynlora.inject import AdapterConfig, adapters, head_names, inject

_PREFIX = PREFIX


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task type for a model: SEQ_CLS with a classifier head, CAUSAL_LM with an LM head."""
    if head_names(model):
        return "SEQ_CLS"
    if hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def _base_name(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def input_gated(model: nn.Module) -> list[str]:
    """Adapters with an input-feature gate g(x), which plain PEFT LoRA cannot express."""
    return [name for name, layer in adapters(model).items() if layer.has_input_gate and layer.rank]


@torch.no_grad()
def calibrate_input_gates(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each adapter's g(x) over every token position of the calibration batches."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, layer in adapters(model).items():
        if layer.has_input_gate:
            def hook(module, args, output, name=name):
                g = module.input_gate_values(args[0])
                sums[name] = sums.get(name, 0.0) + float(g.sum())
                counts[name] = counts.get(name, 0) + g.numel()
            handles.append(layer.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        for batch in batches:
            model(**batch)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in sums}


@contextmanager
def constant_input_gates(model: nn.Module, means: Mapping[str, float]) -> Iterator[None]:
    """Run the model with each g(x) replaced by its calibration mean: what the PEFT export computes."""
    layers = adapters(model)
    try:
        for name, value in means.items():
            layers[name].input_gate_constant = value
        yield
    finally:
        for name in means:
            layers[name].input_gate_constant = None


def export_state_dict(model: nn.Module, gate_means: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """PEFT-named tensors: folded lora_A / lora_B of every non-empty adapter plus the task head.

    An input-gated adapter needs ``gate_means`` (``calibrate_input_gates``): its mean gate is folded
    into B, an approximation (the PEFT adapter then applies the average gate to every token).
    """
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
            raise DynloraError(f"adapter {name} is merged; unmerge before exporting")
        b = layer.folded_b().detach()
        if layer.has_input_gate:
            b = b * gate_means[name]  # type: ignore[index]
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = b
    for head in head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            tensors[f"{_PREFIX}{head}.{pname}"] = p.detach()
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
                gate_means: Mapping[str, float] | None = None) -> Path:
    """Write a plain PEFT LoRA adapter folder; written to a temporary folder, then renamed.

    Input-gated adapters need ``gate_means`` (see ``export_state_dict``); without them this refuses.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise DynloraError(f"export folder {folder} exists and is not empty; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tensors = export_state_dict(model, gate_means)  # refuses before anything is written
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
