"""Adapter precision on a low-precision base: float32 masters by default (as PEFT keeps them), the
same logits as PEFT LoRA in the same precision, dtype kept through resizes and optimizer surgery,
and an ``inject`` that fails leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, adapters, inject
from dynlora.decide.plan import Resize
from dynlora.errors import DynloraError
from tests.conftest import tiny_bert, tiny_llama, tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adapters_are_float32_masters_on_a_low_precision_base(dtype):
    model = tiny_llama(lm=True).to(dtype)
    layers = inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True, input_gate=True))
    for layer in layers.values():
        assert {p.dtype for n, p in layer.named_parameters() if not n.startswith("base.")} == {torch.float32}
        assert layer.base.weight.dtype == dtype
    with torch.no_grad():
        out = model(**tokens()).logits
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_base_dtype_option_follows_the_base():
    model = tiny_llama(lm=True).to(torch.bfloat16)
    layers = inject(model, AdapterConfig(rank=4, dtype="base"))
    assert {layer.lora_A.dtype for layer in layers.values()} == {torch.bfloat16}
    with pytest.raises(DynloraError, match="adapter dtype 'float64' is not valid"):
        AdapterConfig(dtype="float64")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_same_logits_as_peft_lora_in_the_same_precision(dtype):
    ours, theirs = tiny_llama(lm=True).to(dtype), tiny_llama(lm=True).to(dtype)
    layers = inject(ours, AdapterConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")),
                    generator=torch.Generator().manual_seed(0))
    peft_model = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_B.normal_(std=0.1)
            module = peft_model.base_model.model.get_submodule(name)
            assert module.lora_A["default"].weight.dtype == torch.float32  # PEFT's masters too
            module.lora_A["default"].weight.copy_(layer.lora_A)
            module.lora_B["default"].weight.copy_(layer.lora_B)
        batch = tokens()
        torch.testing.assert_close(ours(**batch).logits, peft_model(**batch).logits, atol=0, rtol=0)


def test_resize_and_surgery_keep_dtype_and_the_output():
    model = tiny_bert().to(torch.bfloat16)
    inject(model, AdapterConfig(rank=4, alpha=8), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, optimizer=opt)
    model.train()
    ids = tokens(batch=4, seq=6)["input_ids"]
    model(input_ids=ids).logits.float().sum().backward()
    opt.step()
    opt.zero_grad()
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    name = next(iter(controller.layers))
    controller.resize({name: Resize(keep=(0, 1, 2, 3), grow=2)})
    layer = controller.layers[name]
    assert layer.rank == 6 and layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    state = opt.state[layer.lora_A]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].shape == layer.lora_A.shape
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=0, rtol=0)


def test_a_failed_inject_leaves_the_model_as_it_was():
    model = tiny_bert()
    broken = model.bert.encoder.layer[1].output.dense
    broken.in_features = None  # an unreadable layer, as an unsupported type would be
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(DynloraError, match=r"cannot adapt bert\.encoder\.layer\.1\.output\.dense \(Linear\)"):
        inject(model, AdapterConfig(rank=4))
    assert adapters(model) == {} and [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    assert model.bert.encoder.layer[1].output.dense is broken
