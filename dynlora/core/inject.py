"""Put adapters into a model by target names, find them again, merge them, take them out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.core.linear import is_linear
from dynlora.errors import DynloraError

ALL_LINEAR = "all-linear"
HEAD_NAMES = ("classifier", "score", "lm_head")  # output layers: never adapted, classifier heads train
_REGEX_CHARS = set("*()[]|^$\\?+{}")
ADAPTER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "base": None}


@dataclass(frozen=True)
class AdapterConfig:
    """What to inject: rank, alpha, dropout, which modules, and whether each rank carries a gate.

    ``targets``: ``"all-linear"`` (every Linear/Conv1D but the output head), a regular expression
    matched against full module names (as PEFT does with a string), or a sequence of names that
    match a module when equal to its full name or to a dotted suffix of it (as PEFT does with a list).
    ``rank_pattern`` maps full module names to a rank other than ``rank`` (used to load adapters with
    unequal ranks); ``scale_pattern`` likewise overrides ``alpha / rank``. ``input_gate`` adds the
    per-token gate ``g(x) = sigmoid(w . x + b)`` on each adapter's output (w = 0, b = ``input_gate_bias``).
    ``dtype`` is what the adapters' weights are kept in: float32 (masters, the default, as PEFT does),
    bfloat16 / float16, or ``"base"`` (each base layer's compute dtype; never a quantized storage dtype).
    ``fade`` gives every adapter a per-rank multiplier (all ones) that a method can lower to switch ranks
    off smoothly.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | tuple[str, ...] = ALL_LINEAR
    use_gate: bool = False
    input_gate: bool = False
    input_gate_bias: float = 4.0
    fade: bool = False
    dtype: str = "float32"  # the adapters' own weights; "base": the base layer's compute dtype
    capacity: int | None = None  # rank slots every adapter holds for good (static shapes); None: follow the rank
    train_head: bool = True
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    scale_pattern: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise DynloraError(f"rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise DynloraError(f"alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise DynloraError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, (list, tuple)):
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise DynloraError(f"targets must be non-empty names, got {self.targets!r}")
            object.__setattr__(self, "targets", tuple(self.targets))
        elif not isinstance(self.targets, str) or not self.targets:
            raise DynloraError(f"targets must be 'all-linear', a regex or a list of names, got {self.targets!r}")
        if self.dtype not in ADAPTER_DTYPES:
            raise DynloraError(f"adapter dtype {self.dtype!r} is not valid; valid: {', '.join(ADAPTER_DTYPES)}")
        bad = {k: v for k, v in self.rank_pattern.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise DynloraError(f"rank_pattern ranks must be integers >= 0, got {bad}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise DynloraError(f"capacity must be a positive integer, got {self.capacity!r}")


def parse_targets(text: str) -> str | tuple[str, ...]:
    """CLI form: ``all-linear``, a regex (has regex characters), or comma-separated names."""
    text = text.strip()
    if text == ALL_LINEAR or any(ch in _REGEX_CHARS for ch in text):
        return text
    return tuple(t.strip() for t in text.split(",") if t.strip())


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear / Conv1D in the model; an adapted one goes by its own name."""
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    names = [n for n, m in model.named_modules() if is_linear(m)]
    return [n[: -len(".base")] if n.endswith(".base") and n[: -len(".base")] in wrapped else n for n in names]


def head_names(model: nn.Module) -> list[str]:
    """Names of the task head modules (``classifier`` / ``score``) that train alongside adapters."""
    return [n for n, _ in model.named_modules() if n.split(".")[-1] in ("classifier", "score")
            and "." not in n]


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task type for a model: SEQ_CLS with a classifier head, CAUSAL_LM with an LM head."""
    if head_names(model):
        return "SEQ_CLS"
    if hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def _describe(names: list[str]) -> str:
    leaves = sorted({n.split(".")[-1] for n in names})
    example = names[0] if names else "none"
    return f"{len(names)} linear modules, leaf names: {', '.join(leaves)} (e.g. {example})"


def match_targets(model: nn.Module, targets: str | tuple[str, ...]) -> list[str]:
    """Full names of the modules that ``targets`` selects; an error if it selects none."""
    candidates = linear_module_names(model)
    if targets == ALL_LINEAR:
        chosen = [n for n in candidates if n.split(".")[-1] not in HEAD_NAMES]
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise DynloraError(f"targets regex {targets!r} is invalid: {err}") from None
        chosen = [n for n in candidates if pattern.fullmatch(n)]
    else:
        chosen = [n for n in candidates if any(n == t or n.endswith("." + t) for t in targets)]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in candidates)]
        if missing and chosen:
            raise DynloraError(f"targets {missing} match no linear module; the model has {_describe(candidates)}")
    if not chosen:
        raise DynloraError(f"targets {targets!r} match no linear module; the model has {_describe(candidates)}")
    return chosen


def inject(model: nn.Module, config: AdapterConfig, generator: torch.Generator | None = None) -> dict[str, LoraLayer]:
    """Freeze the model, wrap each target module in a ``LoraLayer``, unfreeze the task head.

    Every adapter is built before the model is touched: if one cannot be (an unsupported layer), the
    call raises a ``DynloraError`` naming the module and its type and leaves the model as it was.
    Returns the adapters by full module name, in model order.
    """
    if adapters(model):
        raise DynloraError("model already has dynlora adapters; remove them before injecting again")
    names = match_targets(model, config.targets)
    built: list[tuple[nn.Module, str, LoraLayer]] = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        try:
            layer = LoraLayer(base, rank=config.rank_pattern.get(name, config.rank), alpha=config.alpha,
                              dropout=config.dropout, use_gate=config.use_gate, generator=generator,
                              input_gate=config.input_gate, input_gate_bias=config.input_gate_bias,
                              dtype=ADAPTER_DTYPES[config.dtype], capacity=config.capacity)
        except (TypeError, RuntimeError, AttributeError, ValueError) as err:
            first = (str(err) or type(err).__name__).splitlines()[0]
            raise DynloraError(f"cannot adapt {name} ({type(base).__name__}): {first}") from None
        if config.fade:
            layer.enable_fade()
        if name in config.scale_pattern:
            layer.scale.fill_(config.scale_pattern[name])
        elif name in config.rank_pattern:
            layer.scale.fill_(config.alpha / max(config.rank, 1))
        built.append((parent, child, layer))
    for p in model.parameters():  # nothing below can fail
        p.requires_grad_(False)
    layers: dict[str, LoraLayer] = {}
    for (parent, child, layer), name in zip(built, names):
        setattr(parent, child, layer)
        layers[name] = layer
    if config.train_head:
        for head in head_names(model):
            for p in model.get_submodule(head).parameters():
                p.requires_grad_(True)
    return layers


def adapters(model: nn.Module) -> dict[str, LoraLayer]:
    """Every ``LoraLayer`` in the model by full name (the name of the module it replaced)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight."""
    for layer in adapters(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo ``merge``."""
    for layer in adapters(model).values():
        layer.unmerge()


def remove(model: nn.Module, merge_first: bool = False) -> nn.Module:
    """Put the base modules back (merged into them first if asked); returns the model."""
    for name, layer in adapters(model).items():
        if merge_first:
            layer.merge()
        elif layer.merged:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return model
