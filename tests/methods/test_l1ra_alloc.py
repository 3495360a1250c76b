"""L1RA x module allocation: the selector picks the adapters that train; only their gates shrink and only
they trade ranks; frozen adapters keep theirs; the total holds; the flags are the parts' own."""

import pytest
import torch

import dynlora
from dynlora.methods.l1ra import L1RAConfig
from dynlora.methods.l1ra_alloc import L1RAAllocConfig
from dynlora.methods.module_alloc import ModuleAllocConfig
from tests.conftest import labelled_batch, tiny_bert, train_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ranks_move_only_among_the_adapters_that_train():
    config = dynlora.DynamicLoraConfig(method="l1ra-alloc", r=4, lora_alpha=8, method_config={
        "lam": 3.0, "lr_c": 0.1, "interval": 4, "schedule": "every:3", "k": 0.5})
    model = dynlora.get_dynamic_model(tiny_bert(), config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    controller = dynlora.attach(model, opt, total_steps=20)
    budget = sum(controller.ranks().values())
    gates_before = {n: layer.gate.detach().clone() for n, layer in controller.layers.items()}
    ranks_before = controller.ranks()
    moved = 0
    for until in range(1, 20):
        training = controller.method.active  # the set that trains during this step (None: all)
        train_steps(model, opt, controller, until, labelled_batch)
        if training is not None:
            for name in set(controller.layers) - set(training):  # a frozen adapter's gate neither trains nor decays
                assert torch.equal(controller.layers[name].gate, gates_before[name]), name
        for event in [e for e in controller.history if e.step == until and e.event == "realloc"]:
            changed = {n for n, r in event.ranks.items() if r != ranks_before[n]}
            if training is not None:
                assert changed <= set(training), "a frozen adapter's rank moved"
            moved += event.detail["moved"]
        assert sum(controller.ranks().values()) == budget
        gates_before = {n: layer.gate.detach().clone() for n, layer in controller.layers.items()}
        ranks_before = controller.ranks()
    assert moved > 0
    assert any(e.event == "select" for e in controller.history)


def test_the_config_is_both_methods_knobs_under_their_own_flags():
    config = L1RAAllocConfig(lam=0.3, k=0.25, select_threshold=0.4, threshold=1e-5)
    assert config.rank_config() == L1RAConfig(lam=0.3, threshold=1e-5)
    assert config.select_config() == ModuleAllocConfig(k=0.25, threshold=0.4)
    from dynlora.cli import _values, build_parser
    from dynlora.training.arguments import run_config

    opts = run_config(vars(_values(build_parser(), [
        "train", "--method", "l1ra-alloc", "--l1ra-lambda", "0.3", "--k", "0.25", "--threshold", "0.4",
        "--l1ra-threshold", "1e-5"])))
    assert opts.adapters.method_config == config
    with pytest.raises(dynlora.DynloraError, match="k"):
        L1RAAllocConfig(k=0)
