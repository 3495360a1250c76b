"""Instruction tuning of a tiny random Llama through the Trainer (no download)."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dynlora.training.options import TrainOptions
from dynlora.training.pipeline import train


# adaptive on a causal LM also runs in test_input_gated_lm_export_reports_its_cost and, through SFTTrainer, in
# tests/hf/test_sft.py; these three stay opt-in to keep the default suite inside CI's budget
@pytest.mark.parametrize("method", ["lora", "l1ra", "module-alloc:topk", "peft-lora",
                                    *(pytest.param(m, marks=pytest.mark.slow)
                                      for m in ("adaptive:no-gate", "adaptive", "peft-adalora"))])
def test_instruction_tuning_runs_each_method_and_exports(tiny_lm, tmp_path, method):
    out = tmp_path / "run"
    metrics = train(TrainOptions(model=str(tiny_lm), task="trec6-instruct", method=method, train_size=64,
                                 max_steps=10, batch_size=4, rank=2, lr=1e-2, max_length=64, output=str(out)),
                    log=lambda s: None)
    assert metrics["steps"] == 10 and metrics["eval_loss"] > 0 and 0 <= metrics["exact_match"] <= 1
    assert metrics["total_rank"] == metrics["budget"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())


def test_input_gated_lm_export_reports_its_cost(tiny_lm, tmp_path):
    out = tmp_path / "run"
    metrics = train(TrainOptions(model=str(tiny_lm), task="trec6-instruct", method="adaptive", train_size=32,
                                 max_steps=4, batch_size=4, rank=2, lr=1e-2, max_length=64, output=str(out)),
                    log=lambda s: None)
    assert metrics["export_logits_max_error"] >= 0 and metrics["export_eval_loss"] > 0
    assert 0 < metrics["input_gate_flops_share"] < 0.05
    assert (out / "dynlora_state").is_dir()
