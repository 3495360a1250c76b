"""The schema of ``metrics.json``: one typed record per run, written once and read back by compare.

``RUN_KEYS`` every run has; a task kind adds its ``QUALITY_KEYS`` (accuracy and F1, or eval loss,
perplexity and exact match); ``GATE_KEYS`` appear when the model has an input gate folded into the export.
"""

from __future__ import annotations

from typing import TypedDict


class RunCost(TypedDict):
    """Size, cost, speed and memory of one run (this process's part of it: after a resume, the resumed steps)."""

    trainable_params: int
    adapter_flops: int
    total_rank: int
    budget: int
    modules: int
    train_seconds: float
    step_seconds: float
    peak_memory_mb: float
    activation_mb: float
    activation_steady_mb: float
    grads_optimizer_mb: float
    train_loss: float
    steps: int


class GateExport(TypedDict, total=False):
    """What folding the input gate's calibration means into the PEFT export costs."""

    input_gate_mean: float
    export_logits_max_error: float
    export_accuracy: float
    export_eval_loss: float
    input_gate_flops: int
    input_gate_flops_share: float


class Quality(TypedDict, total=False):
    """The task's metrics on the test split: classification, or causal-LM instruction tuning."""

    accuracy: float
    f1: float
    eval_loss: float
    perplexity: float
    exact_match: float


class RunMetrics(RunCost, Quality, GateExport, total=False):
    """``metrics.json``: the run, its task metrics, its cost and (input gate) its export."""

    task: str
    method: str
    seed: int
    train_examples: int
    test_examples: int
    output: str


RUN_KEYS: tuple[str, ...] = tuple(RunCost.__annotations__)
QUALITY_KEYS: tuple[str, ...] = tuple(Quality.__annotations__)
GATE_KEYS: tuple[str, ...] = tuple(k for k in GateExport.__annotations__ if k != "input_gate_mean")
