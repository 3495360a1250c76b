"""One rank for every module: a PEFT LoRA folder rewritten so that each adapter has rank R, for engines
that take a single rank (and one ``lora_alpha / r``) per adapter.

Each module's A gets zero rows and its B zero columns up to R, and its own scale (``alpha / r`` from
``alpha_pattern``, or ``alpha / sqrt(r)`` with rsLoRA) is folded into B, so the one global scale of the
padded config is 1 (``lora_alpha == r == R``). The zero ranks add nothing: the padded adapter computes
the same update as the original.

``dynlora export RUN --output DIR --pad-rank R`` writes one.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file, save_file

from dynlora.errors import DynloraError
from dynlora.io.adapter_file import WEIGHTS_NAME

_A, _B = ".lora_A.weight", ".lora_B.weight"


def module_scale(config: LoraConfig, module: str, rank: int) -> float:
    """The LoRA scale PEFT gives ``module`` at ``rank`` under ``config`` (its alpha_pattern, rsLoRA)."""
    alphas = config.alpha_pattern or {}
    alpha = alphas.get(get_pattern_key(list(alphas), module), config.lora_alpha)
    return alpha / (math.sqrt(rank) if config.use_rslora else rank)


def padded_tensors(tensors: dict[str, torch.Tensor], config: LoraConfig, rank: int) -> dict[str, torch.Tensor]:
    """The adapter's tensors with every A at ``rank`` rows and every B at ``rank`` columns, scale in B."""
    ranks = {key[: -len(_A)]: t.shape[0] for key, t in tensors.items() if key.endswith(_A)}
    if not ranks:
        raise DynloraError("the adapter has no lora_A weights: nothing to pad")
    widest = max(ranks.values())
    if rank < widest:
        raise DynloraError(f"pad rank {rank} is below the adapter's largest rank {widest}; give --pad-rank >= {widest}")
    out = {k: v for k, v in tensors.items() if not k.endswith((_A, _B))}  # the task head, as it is
    for path, r in ranks.items():
        a, b = tensors[path + _A], tensors[path + _B]  # (r, in), (out, r)
        scale = module_scale(config, path.removeprefix("base_model.model."), r)
        folded = (b.float() * scale).to(b.dtype)
        out[path + _A] = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], dim=0).contiguous()
        out[path + _B] = torch.cat([folded, b.new_zeros(b.shape[0], rank - r)], dim=1).contiguous()
    return out


def pad_adapter(source: Path, folder: Path, rank: int) -> Path:
    """Write ``source`` (a PEFT LoRA folder) padded to ``rank`` into the new ``folder``; aside, then renamed."""
    if rank < 1:
        raise DynloraError(f"pad rank {rank} must be >= 1")
    config = LoraConfig.from_pretrained(str(source))
    if config.use_dora or getattr(config, "lora_bias", False):
        raise DynloraError(f"adapter {str(source)!r} uses DoRA or a LoRA bias, which zero-padding does not cover")
    tensors = padded_tensors(load_file(str(source / WEIGHTS_NAME)), config, rank)  # refuses before any write
    padded = dataclasses.replace(config, r=rank, lora_alpha=rank, rank_pattern={}, alpha_pattern={},
                                 use_rslora=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        padded.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
