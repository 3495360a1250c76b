"""4-bit (nf4) and 8-bit bitsandbytes bases on this CPU: dynlora wraps Linear4bit / Linear8bitLt with
float32 adapters, matches PEFT LoRA on the same quantized model, and its export loads in plain PEFT
with the same logits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, inject
from dynlora.decide.plan import Resize
from dynlora.io.export import export_peft
from tests.conftest import tokens
from tests.tolerance import assert_within_rounding, chain_terms

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TARGETS = ("q_proj", "v_proj", "down_proj")
QUANT = {"4bit": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                      bnb_4bit_compute_dtype=torch.bfloat16),
         "8bit": dict(load_in_8bit=True)}
LAYER = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}
# float32 adapters on the quantized base of ``folder``'s Llama (2 layers, hidden 64, feed-forward 128), 8 tokens
TERMS = chain_terms(layers=2, hidden=64, intermediate=128, seq=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-llama-q")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def load(folder, kind):
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(**QUANT[kind]),
                                                 device_map="cpu")
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False).eval()


def ours(folder, kind):
    model = load(folder, kind)
    layers = inject(model, AdapterConfig(rank=4, alpha=8, targets=TARGETS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(1))
    return model, layers


@pytest.mark.parametrize("kind", sorted(QUANT))
def test_adapters_wrap_the_quantized_layer_in_float32_and_train(folder, kind):
    model, layers = ours(folder, kind)
    for layer in layers.values():
        assert type(layer.base).__name__ == LAYER[kind] and not layer.base.weight.is_floating_point()
        assert layer.quantized and layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    batch = tokens(seq=8)
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(layer.lora_A.grad is not None and float(layer.lora_A.grad.abs().sum()) > 0 for layer in layers.values())
    with pytest.raises(RuntimeError, match="quantized"):
        next(iter(layers.values())).merge()


@pytest.mark.parametrize("kind", sorted(QUANT))
def test_same_logits_as_peft_lora_on_the_same_quantized_base(folder, kind):
    model, layers = ours(folder, kind)
    peft_model = get_peft_model(load(folder, kind), LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS))).eval()
    with torch.no_grad():
        for name, layer in layers.items():
            module = peft_model.base_model.model.get_submodule(name)
            module.lora_A["default"].weight.copy_(layer.lora_A)
            module.lora_B["default"].weight.copy_(layer.lora_B)
        batch = tokens(seq=8)
        torch.testing.assert_close(model(**batch).logits, peft_model(**batch).logits, atol=0, rtol=0)


@pytest.mark.parametrize("kind", sorted(QUANT))
def test_export_loads_in_plain_peft_onto_the_quantized_base_with_the_same_logits(folder, kind, tmp_path):
    model, layers = ours(folder, kind)
    controller = Controller(model)
    name = next(iter(layers))
    with torch.no_grad():
        layers[name].lora_B[:, 1] = 0.0  # a rank that no longer contributes can be cut without moving the output
        before = model(**tokens(seq=8)).logits
        controller.resize({name: Resize(keep=(0, 2, 3), grow=2)})  # unequal ranks, as after a reallocation
        # the cut rank and the new ones add exact zeros; the 5 ranks may be summed in another order
        assert_within_rounding(model(**tokens(seq=8)).logits, before, TERMS)
    export_peft(model, tmp_path / "adapter", dtype="float32")  # the float32 masters: exact
    peft_model = PeftModel.from_pretrained(load(folder, kind), str(tmp_path / "adapter")).eval()
    with torch.no_grad():  # PEFT's adapter forward against dynlora's, both in float32 on the same base
        assert_within_rounding(peft_model(**tokens(seq=8)).logits, model(**tokens(seq=8)).logits, TERMS)
    # by default the export takes the base's compute dtype (bf16 for nf4, float32 for LLM.int8()): the adapter
    # weights rounded once, the logits as close as that rounding allows
    export_peft(model, tmp_path / "default")
    compute = torch.bfloat16 if kind == "4bit" else torch.float32
    assert {t.dtype for k, t in load_file(str(tmp_path / "default" / "adapter_model.safetensors")).items()
            if "lora_" in k} == {compute}
    rounded = PeftModel.from_pretrained(load(folder, kind), str(tmp_path / "default")).eval()
    with torch.no_grad():  # 3 adapters a layer, 2 layers: A and B rounded once, PEFT's input and output too
        assert_within_rounding(rounded(**tokens(seq=8)).logits, model(**tokens(seq=8)).logits, terms=3 * 2 * 4,
                               dtype=compute)
