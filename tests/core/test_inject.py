import dataclasses

import pytest
import torch

from dynlora.core.count import trainable_parameters
from dynlora.core.inject import (
    AdapterConfig,
    adapters,
    inject,
    linear_module_names,
    match_targets,
    merge,
    parse_targets,
    remove,
    unmerge,
)
from dynlora.errors import DynloraError
from tests.conftest import tiny_bert, tiny_llama, tokens
from tests.tolerance import assert_within_rounding, chain_terms

EXPECTED_LEAVES = {
    "bert": {"query", "key", "value", "dense"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
}


def test_all_linear_targets_every_block_linear_but_the_head(tiny_model):
    arch, model = tiny_model
    layers = inject(model, AdapterConfig(rank=2))
    assert {n.split(".")[-1] for n in layers} == EXPECTED_LEAVES[arch]
    assert not any(n.split(".")[-1] in ("classifier", "score") for n in layers)


def test_fresh_injection_is_identity_and_only_adapters_and_head_train(tiny_model):
    _, model = tiny_model
    batch = tokens()
    with torch.no_grad():
        ref = model(**batch).logits
    layers = inject(model, AdapterConfig(rank=3, use_gate=True))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref)  # B = 0: every adapter adds exact zeros
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert ".lora_" in name or ".gate" in name or name.split(".")[0] in ("classifier", "score")
    assert any(name.startswith(("classifier", "score")) for name in trainable)
    assert trainable_parameters(model) > sum(layer.num_parameters() for layer in layers.values())


def test_merge_unmerge_remove(tiny_model):
    _, model = tiny_model
    batch = tokens()
    inject(model, AdapterConfig(rank=2))
    with torch.no_grad():
        for layer in adapters(model).values():
            layer.lora_B.normal_(std=0.1)
        y = model(**batch).logits
        # merged weights sum the same products in another order in every layer (tiny models: 2 layers, hidden 32,
        # feed-forward at most 128, 8 tokens); unmerging leaves each weight within 2 roundings of what it was
        terms = chain_terms(layers=2, hidden=32, intermediate=128, seq=8) + 2
        merge(model)
        assert_within_rounding(model(**batch).logits, y, terms)
        unmerge(model)
        assert_within_rounding(model(**batch).logits, y, terms)
        remove(model, merge_first=True)
        assert not adapters(model)
        assert_within_rounding(model(**batch).logits, y, terms)


def test_target_forms():
    model = tiny_bert()
    assert len(match_targets(model, ("query", "value"))) == 4
    assert len(match_targets(model, r".*layer\.0\..*(query|key)")) == 2
    assert match_targets(model, ("bert.encoder.layer.1.output.dense",)) == ["bert.encoder.layer.1.output.dense"]
    assert parse_targets("query, value") == ("query", "value")
    assert parse_targets("all-linear") == "all-linear"
    assert parse_targets(".*query") == ".*query"


@pytest.mark.parametrize("targets", [("nonexistent",), r"foo.*", ("query", "typo_proj")])
def test_targets_that_match_nothing_list_the_linear_modules(targets):
    model = tiny_bert()
    with pytest.raises(DynloraError) as err:
        match_targets(model, targets)
    msg = str(err.value)
    assert "\n" not in msg and "query" in msg and "dense" in msg


def test_bad_config_values():
    for kwargs in ({"rank": 0}, {"rank": -2}, {"alpha": 0}, {"dropout": 1.0}, {"targets": ()}):
        with pytest.raises(DynloraError):
            AdapterConfig(**kwargs)


def test_config_is_frozen():
    cfg = AdapterConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rank = 3


def test_double_injection_refused():
    model = tiny_llama()
    names = linear_module_names(model)
    inject(model, AdapterConfig(rank=2))
    with pytest.raises(DynloraError):
        inject(model, AdapterConfig(rank=2))
    assert linear_module_names(model) == names  # adapted modules are still found by their own names
