"""``dynlora compare``'s summary.md and plots: mean ± std over seeds per method, ratios to PEFT LoRA.

Columns are chosen from what the rows hold: accuracy and macro-F1 for classification; eval loss,
perplexity and exact match for causal-LM instruction tuning.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from dynlora.methods import registry

# summary columns: (row key, header, decimals); a column shows when some row has its key; a ratio to
# the baseline method (registry.baseline()) follows the keys in RATIOS
COLUMNS = (("accuracy", "accuracy", 4), ("f1", "macro-F1", 4), ("eval_loss", "eval loss", 4),
           ("perplexity", "perplexity", 2), ("exact_match", "exact match", 4),
           ("trainable_params", "trainable params", 0),
           ("adapter_flops", "adapter FLOPs/token", 0), ("total_rank", "total rank", 0),
           ("step_seconds", "step s", 3), ("activation_mb", "activation MB", 1),
           ("activation_steady_mb", "steady activation MB", 1),
           ("grads_optimizer_mb", "grads+optim MB", 2), ("peak_memory_mb", "peak MB", 0),
           ("train_seconds", "train s", 1))
RATIOS = ("step_seconds", "activation_mb", "activation_steady_mb")


def _static(method: str) -> bool:
    """Whether a compare method (``name[:variant][@lr=...]``) keeps uniform ranks (no heatmap to draw)."""
    return registry.get(method.split("@")[0]).static


def safe_name(method: str) -> str:
    """A method name fit for a file name: ``name:variant@lr=0.1`` -> ``name_variant_lr_0.1``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", method)


def cell_dir(root: Path, method: str, seed: int) -> Path:
    """``root/cells/<method>-s<seed>``."""
    return root / "cells" / f"{safe_name(method)}-s{seed}"


def headline_metric(rows: list[dict[str, Any]]) -> str:
    """The metric plotted against parameters: accuracy for classification, eval loss for a causal LM."""
    return "accuracy" if any("accuracy" in r for r in rows) else "eval_loss"


def _fmt(values: list[float], decimals: int) -> str:
    text = f"{statistics.fmean(values):,.{decimals}f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):,.{decimals}f}"


def _ratio(rows: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> str:
    denominator = statistics.fmean(r[key] for r in base) if base else 0.0
    return f"{statistics.fmean(r[key] for r in rows) / denominator:.3f}" if denominator else "n/a"


def summary_markdown(rows: list[dict[str, Any]], methods: tuple[str, ...], meta: dict[str, Any]) -> str:
    """summary.md: how it was made, then mean ± sample std over seeds per method."""
    m, s, finished = meta["machine"], meta["settings"], [r["finished"] for r in rows]
    by_method = {method: [r for r in rows if r["method"] == method] for method in methods}
    baseline = registry.baseline()
    base = by_method.get(baseline, [])
    head = ["method", "seeds"]
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    for key, title, _ in columns:
        head += [title] + ([f"{title.split()[0]} × {baseline}"] if key in RATIOS and base else [])
    scored = ", scored on the validation split" if s.get("eval_split") == "validation" else ""
    lines = [f"# compare: {s['task'] or s['dataset']}, profile {s['profile']}{scored}", "",
             f"- command: `{meta['command']}`",
             f"- machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} (threads: {m['torch_threads']}), "
             f"transformers {m['transformers']}, peft {m['peft']}, device {m['device']}",
             f"- date: cells finished {min(finished)} to {max(finished)}" if rows else f"- date: {meta['date']}",
             f"- settings: model {s['model'] or 'minilm (default)'}, " + ", ".join(
                 f"{k} {v}" for k, v in s.items() if k not in ("task", "dataset", "profile", "model") and v is not None
                 and (s["dataset"] or k not in ("text_column", "label_column"))),
             f"- steps per cell: {sorted({r['steps'] for r in rows})}; total rank budget: "
             f"{sorted({r['budget'] for r in rows})}", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method, group in by_method.items():
        if not group:
            continue
        cells = [method, str(len(group))]
        for key, _, decimals in columns:
            values = [float(r[key]) for r in group if key in r]  # rows of older versions may lack a key
            cells.append(_fmt(values, decimals) if values else "–")
            if key in RATIOS and base:
                cells.append(_ratio(group, base, key) if values and all(key in r for r in base) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for method, group in by_method.items():
        gated = [r for r in group if "input_gate_flops_share" in r]
        if gated:
            metric = "accuracy" if "export_accuracy" in gated[0] else "eval_loss"
            lines += ["", f"- {method}: input gate FLOPs {_fmt([100 * r['input_gate_flops_share'] for r in gated], 3)}"
                      "% of the model's forward FLOPs per token; PEFT export with each gate's calibration mean folded "
                      f"into B: max logits error {_fmt([r['export_logits_max_error'] for r in gated], 4)}, test "
                      f"{metric.replace('_', ' ')} {_fmt([r[f'export_{metric}'] for r in gated], 4)} (exact model: "
                      f"{_fmt([r[metric] for r in gated], 4)})"]
    runs, devices = len({r["invocation"] for r in rows}), sorted({r.get("device", "?") for r in rows})
    mixed = f" (rows from {runs} invocations on {', '.join(devices)})" if runs > 1 else ""
    lines += ["", "Mean ± sample standard deviation over seeds (no ± with one seed). Ratios divide by "
              f"{baseline}'s mean from the same folder{mixed}.",
              "Step s is training wall time / optimizer steps (Trainer, callbacks and data included). Activation MB "
              "counts the bytes autograd saved for backward (largest micro-batch of the run; steady: median of the "
              "second half of the steps, after a method has switched adapters off); grads+optim MB the gradients "
              "and optimizer state; "
              "peak MB is the CUDA allocator peak on a GPU, and on a CPU the sampled RSS of the whole process "
              "(earlier cells included). Trainable params count every trainable tensor (AdaLoRA's masked ranks and "
              "the task head too).", "",
              "The tasks are stand-ins built from data shipped on PyPI, not GLUE: these numbers are not comparable "
              "with published GLUE results.", "",
              f"![{headline_metric(rows)} vs trainable parameters]({headline_metric(rows)}_vs_params.png)"]
    lines += [f"![final ranks of {m_}](ranks_{safe_name(m_)}.png)"
              for m_ in methods if not _static(m_) and by_method[m_]]
    return "\n".join(lines) + "\n"


def draw_plots(rows: list[dict[str, Any]], methods: tuple[str, ...], root: Path) -> None:
    """<metric>_vs_params.png, and ranks_<method>.png from the lowest seed's ranks.json per dynamic method."""
    from dynlora.report.plots import metric_vs_params, rank_heatmap

    if rows:
        metric = headline_metric(rows)
        metric_vs_params(rows, root / f"{metric}_vs_params.png", metric)
    for method in methods:
        seeds = sorted(r["seed"] for r in rows if r["method"] == method)
        if _static(method) or not seeds:
            continue
        saved = cell_dir(root, method, seeds[0]) / "ranks.json"
        if not saved.is_file():  # cells are not committed: a fresh clone resuming a folder keeps the drawn plot
            continue
        ranks = json.loads(saved.read_text())
        rank_heatmap(ranks, root / f"ranks_{safe_name(method)}.png",
                     title=f"{method}, seed {seeds[0]}: final rank per module (total {sum(ranks.values())})")


