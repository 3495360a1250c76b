"""``dynlora train --load-in-4bit`` / ``--load-in-8bit``: a QLoRA run on a tiny causal LM through the
Trainer, on this CPU, whose exported adapter plain PEFT loads onto the same quantized base."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from dynlora.cli import main
from dynlora.hf.models import pretrained_kwargs
from tests.conftest import write_pairs

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def wide_lm(tiny_lm, tmp_path_factory):
    """``tiny_lm`` 64 wide: bitsandbytes quantises in blocks of 64, and its CPU inference packs out features
    in blocks of 32; real models are far wider."""
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    config = AutoConfig.from_pretrained(tiny_lm)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16  # k_proj: 2 x 16 out features
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("flag,method", [("--load-in-4bit", "l1ra"), ("--load-in-8bit", "module-alloc")])
def test_quantized_run_finishes_and_exports_for_plain_peft(wide_lm, tmp_path, flag, method):
    out = tmp_path / "run"
    extra = ["--l1ra-lambda", "6", "--l1ra-lr", "0.05", "--l1ra-interval", "2"] if method == "l1ra" else \
        ["--schedule", "every:2"]
    pairs = tmp_path / "pairs.jsonl"  # a small file: a quantized CPU eval of a whole built-in split is slow
    write_pairs(pairs, 60)
    assert main(["train", "--model", str(wide_lm), "--dataset", str(pairs), "--method", method, *extra, flag,
                 "--train-size", "32", "--max-steps", "6", "--batch-size", "4", "--rank", "2", "--lr", "1e-2",
                 "--save-every", "0", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["total_rank"] == metrics["budget"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert any(r["event"] in ("realloc", "select") for r in history)
    kind = flag.removeprefix("--load-in-")
    base = AutoModelForCausalLM.from_pretrained(wide_lm, **pretrained_kwargs(None, kind))
    assert "Linear" in type(base.model.layers[0].self_attn.q_proj).__name__ and \
        not base.model.layers[0].self_attn.q_proj.weight.is_floating_point()
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    # written in the base's compute dtype by default: bf16 for QLoRA's 4-bit, float32 for LLM.int8()
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    expected = torch.bfloat16 if kind == "4bit" else torch.float32
    assert {t.dtype for k, t in weights.items() if "lora_" in k} == {expected}


def test_quantization_config_is_qlora_by_default():
    config = pretrained_kwargs(None, "4bit")["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig) and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16


def test_a_quantized_classifier_keeps_a_float_head_that_trains(tiny_assets, tmp_path):
    _, data = tiny_assets  # the embedded MiniLM: 384 wide, as bitsandbytes' CPU kernels want
    for method in ("l1ra", "peft-lora"):
        out = tmp_path / method
        assert main(["train", "--dataset", data, "--method", method, "--load-in-4bit",
                     "--max-steps", "3", "--batch-size", "8", "--train-size", "32", "--save-every", "0",
                     "--output", str(out)]) == 0
        assert "base_model.model.classifier.weight" in load_file(str(out / "adapter" / "adapter_model.safetensors"))
