"""The adapter folder's ``README.md``: a model card in the format the Hugging Face hub renders (YAML front
matter, then markdown) that says the method, the budget, the final rank per module type, the data, the
metrics, and what a LoRA server needs (``io.serving``).

A run writes it into ``RUN/adapter/``; ``dynlora export`` copies it with the adapter.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from peft import PeftConfig

from dynlora.io.adapter_file import WEIGHTS_NAME, read_header
from dynlora.io.serving import ServingHints, serving_hints

CARD_NAME = "README.md"
GATE_ERROR = "export_logits_max_error"  # the run's metric: folded input gates' measured logits error
_SHOWN = ("accuracy", "f1", "eval_loss", "perplexity", "exact_match", "trainable_params", "adapter_flops",
          "total_rank", "budget", "steps", "train_seconds", "export_logits_max_error")


def rank_by_type(ranks: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """(modules, total rank, largest rank) per module type: the last part of each module's name."""
    groups: dict[str, list[int]] = defaultdict(list)
    for name, rank in ranks.items():
        groups[name.rsplit(".", 1)[-1]].append(rank)
    return {kind: (len(rs), sum(rs), max(rs)) for kind, rs in sorted(groups.items())}


def hints_of(adapter: Path, config: PeftConfig, gate_error: float | None = None) -> ServingHints:
    """Serving hints for the PEFT adapter folder ``adapter`` of ``config`` (its largest rank read from the
    weights' shapes; ``gate_error``: a folded input gate's measured error, from the run's metrics)."""
    shapes = read_header(adapter / WEIGHTS_NAME)
    largest = max((shape[0] for key, shape in shapes.items() if ".lora_A" in key), default=0)
    return serving_hints(config, largest, gate_error)


def base_dtype(base: str) -> str:
    """The dtype a local base folder's config.json records (``auto`` when it records none or is not local)."""
    config = Path(base) / "config.json"
    if not config.is_file():
        return "auto"
    raw = json.loads(config.read_text())
    dtype = raw.get("dtype") or raw.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "auto"


def hints_text(hints: ServingHints, base: str, name: str, path: str) -> list[str]:
    """The serving hints as lines (the card's section, and what export prints)."""
    lines = [f"largest rank {hints.largest_rank}; smallest vLLM --max-lora-rank that takes it: "
             f"{hints.max_lora_rank if hints.max_lora_rank is not None else 'none'}"]
    command = hints.vllm_command(base, name, path, base_dtype(base))
    if command:
        lines += [f"serve with: {command}", f"or: dynlora serve {path}"]
    else:
        lines += [f"not servable as LoRA: {why}" for why in hints.refusals]
    return lines + [f"warning: {w}" for w in hints.warnings]


def serving_lines(run: Path, adapter: Path | None = None) -> list[str]:
    """``hints_text`` for ``run``'s adapter, at ``adapter`` (default: ``run/adapter``)."""
    config = PeftConfig.from_pretrained(str(run / "adapter"))
    metrics = json.loads((run / "metrics.json").read_text())
    hints = hints_of(run / "adapter", config, metrics.get(GATE_ERROR))
    return hints_text(hints, config.base_model_name_or_path or "BASE_MODEL", run.name, str(adapter or run / "adapter"))


def model_card(run: Path) -> str:
    """The model card of ``run`` (run.json, metrics.json and ranks.json written, adapter saved)."""
    record = json.loads((run / "run.json").read_text())
    options, metrics = record["options"], json.loads((run / "metrics.json").read_text())
    ranks = json.loads((run / "ranks.json").read_text())
    config = PeftConfig.from_pretrained(str(run / "adapter"))
    base = config.base_model_name_or_path or str(options.get("model"))
    data = options.get("task") or options.get("dataset")
    kind = str(getattr(config.peft_type, "value", config.peft_type))  # LORA, or a PEFT baseline's ADALORA
    tags = dict.fromkeys(("dynlora", kind.lower(), options["method"].split(":")[0]))
    lines = ["---", "library_name: peft", f"base_model: {base}", "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# {options['method']} adapter for {base}", "",
             f"Trained with dynlora {record.get('dynlora_version', '')} ({options['method']}) on {data}: "
             f"{metrics.get('steps')} optimizer steps, seed {options.get('seed')}, a budget of "
             f"{metrics.get('budget')} ({options.get('budget_unit', 'rank')}), scored on the "
             f"{metrics.get('eval_split', 'test')} split. A plain PEFT {kind} adapter: "
             "`PeftModel.from_pretrained(base, this_folder)`.", "",
             "## Final rank per module type", "", "| type | modules | total rank | largest |", "|---|---:|---:|---:|"]
    lines += [f"| {kind} | {n} | {total} | {top} |" for kind, (n, total, top) in rank_by_type(ranks).items()]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {key} | {metrics[key]} |" for key in _SHOWN if key in metrics]
    lines += ["", "## Serving", ""]
    hints = hints_of(run / "adapter", config, metrics.get(GATE_ERROR))
    lines += [f"- {line}" for line in hints_text(hints, base, "adapter", "PATH_TO_THIS_FOLDER")]
    return "\n".join(lines) + "\n"


def write_model_card(run: Path) -> Path:
    """``run/adapter/README.md`` from ``model_card(run)``."""
    path = run / "adapter" / CARD_NAME
    path.write_text(model_card(run))
    return path
