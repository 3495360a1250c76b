"""Instruction tuning of a tiny random Llama through the Trainer (no download)."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train
from tests.conftest import write_pairs


# every native method also trains a causal LM through SFTTrainer in tests/hf/test_sft.py, and adaptive in
# test_input_gated_lm_export_reports_its_cost; the rest stay opt-in to keep the default suite inside CI's budget
@pytest.mark.parametrize("method", ["l1ra", "peft-lora",
                                    *(pytest.param(m, marks=pytest.mark.slow) for m in
                                      ("lora", "module-alloc:topk", "adaptive:no-gate", "adaptive", "peft-adalora"))])
def test_instruction_tuning_runs_each_method_and_exports(tiny_lm, tmp_path, method):
    out = tmp_path / "run"
    # l1ra on a built-in task; the others on a small file (evaluating, and generating for, a whole split is slow)
    data = {"task": "trec6-instruct"} if method == "l1ra" else {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))}
    metrics = train(run_config(dict(model=str(tiny_lm), **data, method=method, train_size=64,
                                 max_steps=10, per_device_train_batch_size=4, rank=2, learning_rate=1e-2,
                                 max_length=64, output_dir=str(out))),
                    log=lambda s: None)
    assert metrics["steps"] == 10 and metrics["eval_loss"] > 0
    assert 0 <= metrics["exact_match"] <= 1 if method == "l1ra" else "exact_match" not in metrics  # a task's labels
    assert metrics["total_rank"] == metrics["budget"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())


def test_input_gated_lm_export_reports_its_cost(tiny_lm, tmp_path):
    out = tmp_path / "run"
    pairs = tmp_path / "pairs.jsonl"  # a small file: the export is evaluated on its held-out pairs, twice
    write_pairs(pairs)
    metrics = train(run_config(dict(model=str(tiny_lm), dataset=str(pairs), method="adaptive:gate", train_size=32,
                                 max_steps=4, per_device_train_batch_size=4, rank=2, learning_rate=1e-2,
                                 max_length=64, output_dir=str(out))),
                    log=lambda s: None)
    assert metrics["export_logits_max_error"] >= 0 and metrics["export_eval_loss"] > 0
    assert 0 < metrics["input_gate_flops_share"] < 0.05
    assert (out / "dynlora_state").is_dir()
