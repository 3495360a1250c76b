"""``get_dynamic_model`` + ``attach``: PEFT's shape (the same model, base frozen), the plain-PyTorch loop
in two calls, and one-line errors for misuse."""

import pytest
import torch

import dynlora
from dynlora.errors import DynloraError
from tests.conftest import labelled_batch, tiny_bert, train_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_calls_make_a_trainable_dynamic_model_whose_ranks_move():
    model = tiny_bert()
    same = dynlora.get_dynamic_model(model, dynlora.L1RALoraConfig(r=4, lora_alpha=8, lam=1.5, lr_c=0.05,
                                                                   interval=6))
    assert same is model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".gate" in n or "classifier" in n for n in trainable), trainable
    # one param group at the main lr: the gates still train at lr_c
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    controller = dynlora.attach(model, opt, total_steps=14)
    budget = sum(controller.ranks().values())
    train_steps(model, opt, controller, 14, labelled_batch)
    assert any(e.detail["moved"] for e in controller.history if e.event == "realloc")
    assert sum(controller.ranks().values()) == budget


def test_misuse_is_a_one_line_error():
    model = dynlora.get_dynamic_model(tiny_bert(), dynlora.DynamicLoraConfig(method="lora", r=2))
    with pytest.raises(DynloraError, match="adapters already"):
        dynlora.get_dynamic_model(model, dynlora.DynamicLoraConfig())
    with pytest.raises(DynloraError, match="total_steps"):
        dynlora.attach(model)
    with pytest.raises(DynloraError, match="not made by dynlora.get_dynamic_model"):
        dynlora.attach(tiny_bert(), total_steps=5)
    with pytest.raises(DynloraError, match="not a dynlora config"):
        dynlora.get_dynamic_model(tiny_bert(), {"r": 8})
