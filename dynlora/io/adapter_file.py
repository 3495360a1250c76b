"""Check a PEFT adapter folder against a model before any weight is loaded.

dynlora loads adapter weights only from safetensors (never from a pickle, which can run code), and
only after the file's header shows that every tensor fits the model: ``check_adapter_folder`` reads
the header (names and shapes, no data) and refuses, in one line, a missing folder or config, a
pickle offered as weights, a corrupt or truncated file, and an adapter made for another base model.
It works on a plain base model (what ``PeftModel.from_pretrained`` gets) and on one with dynlora
adapters already injected.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.core.linear import in_out_features, is_linear
from dynlora.errors import DynloraError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
SHOWN = 3  # problems spelled out in a message; the rest are counted
# <module path>.lora_A[.weight] / lora_B / lora_E / lora_embedding_A / lora_magnitude_vector ...
_LORA_KEY = re.compile(r"(?P<path>.+)\.(?P<kind>lora_[A-Za-z_]+)(?:\.weight)?")


def _pickle_kind(path: Path) -> str | None:
    """'zip' (torch.save), 'pickle' (legacy torch.save / pickle) or None, from the first bytes."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2..5
        return "pickle"
    return None


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; refuses pickles and corrupt or truncated files."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, ValueError, OSError) as err:
        kind = _pickle_kind(path) if path.is_file() else None
        if kind is not None:
            raise DynloraError(f"{path} is a {kind} file written by torch.save, not safetensors; dynlora does not "
                               "load pickles (they can run code): save the adapter with safetensors") from None
        first = (str(err) or type(err).__name__).strip().splitlines()[0]
        raise DynloraError(f"{path} is corrupt or truncated, not a readable safetensors file ({first})") from None


def read_config(folder: Path) -> dict:
    """``adapter_config.json`` as a dict; a missing or malformed file is a one-line error."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise DynloraError(f"{str(folder)!r} is not a PEFT adapter folder: {CONFIG_NAME} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DynloraError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise DynloraError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear layer (plain, Conv1D or dynlora-wrapped); None otherwise."""
    if isinstance(module, LoraLayer):
        return module.in_features, module.out_features
    return in_out_features(module) if is_linear(module) else None


def _module_problem(model: nn.Module, path: str, kind: str, shape: tuple[int, ...]) -> str | None:
    """Why the tensor ``<path>.<kind>`` does not fit ``model``, or None."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return f"{path}: no such module"
    if kind not in ("lora_A", "lora_B"):
        return None  # other PEFT tensors (embedding LoRA, DoRA magnitudes): the module exists, that is enough
    sizes = _in_out(module)
    if sizes is None:
        return None if not isinstance(module, nn.Embedding) else f"{path}: {kind} on an Embedding, not a linear layer"
    in_features, out_features = sizes
    if len(shape) != 2:
        return f"{path} {kind} {shape} is not a matrix"
    if kind == "lora_A" and shape[1] != in_features:
        return f"{path} lora_A {shape} vs in_features {in_features}"
    if kind == "lora_B" and shape[0] != out_features:
        return f"{path} lora_B {shape} vs out_features {out_features}"
    return None


def _param_problem(model: nn.Module, path: str, shape: tuple[int, ...]) -> str | None:
    """Why a non-adapter tensor (a trained head such as ``classifier.weight``) does not fit ``model``."""
    try:
        param = model.get_parameter(path)
    except AttributeError:
        return f"{path}: no such parameter"
    if tuple(param.shape) != shape:
        return f"{path} {shape} vs the model's {tuple(param.shape)}"
    return None


def fit_problems(model: nn.Module, header: dict[str, tuple[int, ...]]) -> list[str]:
    """Every tensor of a PEFT adapter header that ``model`` has no place for, in file order."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.get_base_model()
    problems: list[str] = []
    ranks: dict[str, dict[str, int]] = {}
    for key, shape in header.items():
        if not key.startswith(PREFIX):
            problems.append(f"{key}: not a PEFT key (no {PREFIX!r} prefix)")
            continue
        name = key[len(PREFIX):]
        match = _LORA_KEY.fullmatch(name)
        if match:
            path, kind = match["path"], match["kind"]
            problem = _module_problem(model, path, kind, shape)
            if kind in ("lora_A", "lora_B") and len(shape) == 2:
                ranks.setdefault(path, {})[kind] = shape[0] if kind == "lora_A" else shape[1]
        else:
            problem = _param_problem(model, name, shape)
        if problem is not None and problem not in problems:
            problems.append(problem)
    for path, r in ranks.items():
        if len(r) == 2 and r["lora_A"] != r["lora_B"]:
            problems.append(f"{path}: lora_A rank {r['lora_A']} vs lora_B rank {r['lora_B']}")
    return problems


def check_adapter_folder(folder: str | os.PathLike, model: nn.Module) -> None:
    """Refuse, in one line, an adapter folder that cannot be loaded safely onto ``model``.

    Checks, before any weight is read: the folder and its ``adapter_config.json`` exist; the weights
    are ``adapter_model.safetensors`` (an ``adapter_model.bin`` pickle is refused) with a readable
    header; every ``lora_A`` / ``lora_B`` matches the in / out features of its module and every other
    tensor (the task head) the shape of its parameter; no key names a module the model lacks.
    ``model`` is the base model (plain, a ``PeftModel``, or with dynlora adapters injected).
    """
    path = Path(folder)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DynloraError(f"adapter folder {str(folder)!r} {what}")
    config = read_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        if (path / PICKLE_NAME).is_file():
            raise DynloraError(f"{str(folder)!r} holds only {PICKLE_NAME}, a pickle; dynlora loads adapter weights "
                               f"only from {WEIGHTS_NAME} (pickles can run code): re-save it with safetensors")
        raise DynloraError(f"{str(folder)!r}: {WEIGHTS_NAME} is missing")
    header = read_header(weights)
    if not header:
        raise DynloraError(f"{weights} holds no tensors")
    problems = fit_problems(model, header)
    if problems:
        made_for = config.get("base_model_name_or_path")
        origin = f" (made for {made_for!r})" if made_for else ""
        shown = "; ".join(problems[:SHOWN])
        more = f"; ... ({len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise DynloraError(f"adapter {str(folder)!r}{origin} does not fit this model: {shown}{more}")


# the dtype of the exported lora_A / lora_B: "base" is each base layer's compute dtype (bf16 for a bf16 or a
# 4-bit bf16-compute base: what a server loads them in), else one dtype for all
EXPORT_DTYPES = {"base": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_export_dtype(dtype: str) -> None:
    if dtype not in EXPORT_DTYPES:
        raise DynloraError(f"export dtype {dtype!r} is not valid; valid: {', '.join(EXPORT_DTYPES)}")
