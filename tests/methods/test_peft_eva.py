"""PEFT's EVA as a baseline: ranks chosen from the training data's activations, plain LoRA's total rank and
budget, and an export that plain PEFT loads with the same logits.

The model is the tiny random BERT; its training batches are random token ids, whose activations still
differ by layer, so EVA's explained variance hands the ranks out unequally.
"""

from __future__ import annotations

import dataclasses

import json

import pytest
import torch

from dynlora.errors import DynloraError
from dynlora.methods import AdapterSettings, registry
from dynlora.methods.base import Prepared, TrainData
from dynlora.methods.peft_common import peft_layers, peft_targets
from dynlora.methods.peft_eva import PeftEvaConfig
from dynlora.training.arguments import run_config
from dynlora.training.prepare import prepare
from tests.conftest import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANK, ALPHA = 2, 4.0  # rank 2: the SVD converges in a quarter of the time rank 4 takes
SETTINGS = AdapterSettings(method="peft-eva", rank=RANK, alpha=ALPHA)
SEED = 3


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    ids = torch.stack([x["input_ids"] for x in items])  # (batch, seq)
    labels = torch.stack([x["label"] for x in items])  # (batch,): a classifier's, one per example
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_data(examples: int = 64, batch_size: int = 8) -> TrainData:
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 100, (8,), generator=g), "label": torch.tensor(i % 2)}
            for i in range(examples)]
    return TrainData(rows, collate, batch_size, seed=0)


def eva_prepared(config: PeftEvaConfig | None = None) -> Prepared:
    settings = dataclasses.replace(SETTINGS, method_config=config or PeftEvaConfig(batches=8))
    return registry.get("peft-eva").prepare(tiny_bert(), settings, 10, SEED, data=train_data())


@pytest.fixture(scope="module")
def eva() -> Prepared:
    return eva_prepared()


def test_ranks_come_from_the_data_and_total_lora_budget(eva):
    targets = peft_targets(tiny_bert(), SETTINGS)
    ranks = eva.ranks()
    assert len(set(ranks.values())) > 1, ranks  # redistributed by explained variance
    assert max(ranks.values()) <= round(RANK * PeftEvaConfig().rho)
    # the total rank is plain LoRA's at r (modules EVA gives no rank drop out, the total stays)
    assert sum(ranks.values()) == RANK * len(targets) == eva.budget
    lora = registry.get("peft-lora").prepare(tiny_bert(), AdapterSettings(method="peft-lora", rank=RANK, alpha=ALPHA),
                                             10, SEED)
    assert eva.budget == lora.budget and sum(lora.ranks().values()) == eva.budget
    for name, layer in peft_layers(eva.model).items():
        assert layer.scaling["default"] == ALPHA / RANK, name  # PEFT scales alpha with the rank: LoRA's scale
        a = layer.lora_A["default"].weight  # (rank, in): EVA's right-singular vectors, orthonormal rows
        torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), atol=1e-5, rtol=0)
        assert float(layer.lora_B["default"].weight.detach().abs().sum()) == 0  # the output starts where the base's is


def test_the_same_seed_prepares_the_same_adapters(eva):
    # a resumed run prepares again before it loads the checkpoint's weights: the shapes must be the same
    again = eva_prepared()
    assert again.ranks() == eva.ranks()
    first, second = peft_layers(eva.model), peft_layers(again.model)
    for name, layer in first.items():
        assert torch.equal(layer.lora_A["default"].weight, second[name].lora_A["default"].weight), name


def test_the_export_is_plain_lora_with_the_same_logits(eva, tmp_path):
    from peft import PeftModel

    layers = peft_layers(eva.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as after training: the output depends on every adapter
        for layer in layers.values():
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    try:
        eva.save_adapter(tmp_path / "adapter")
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == RANK
        assert {n: r for n, r in eva.ranks().items() if r != RANK} == {
            f"base_model.model.{n}": r for n, r in config["rank_pattern"].items()}
        loaded = PeftModel.from_pretrained(tiny_bert(), str(tmp_path / "adapter")).eval()
        ids = torch.randint(1, 100, (4, 8), generator=g)
        eva.model.eval()
        with torch.no_grad():
            want, got = eva.model(input_ids=ids).logits, loaded(input_ids=ids).logits
        # the same modules and weights in the same fp32 computation: equal up to summation order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    finally:
        with torch.no_grad():
            for layer in layers.values():
                layer.lora_B["default"].weight.zero_()


def test_batches_are_seeded_whole_and_keep_the_labels():
    data = train_data(examples=20, batch_size=8)
    batches = data.batches(5)
    assert [b["input_ids"].shape for b in batches] == [torch.Size([8, 8])] * 2  # 20 examples: two whole batches
    assert "labels" in batches[0]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, data.batches(5)))
    assert data.batches(1, size=16)[0]["input_ids"].shape[0] == 16


def test_bad_settings_are_one_line_errors():
    from peft import EvaConfig

    assert PeftEvaConfig().rho == EvaConfig().rho  # PEFT's default
    for make, needle in ((lambda: PeftEvaConfig(rho=0.5), "rho 0.5"), (lambda: PeftEvaConfig(batches=0), "batches 0"),
                         (lambda: PeftEvaConfig(batches=2.5), "batches 2.5")):
        with pytest.raises(DynloraError, match=needle) as caught:
            make()
        assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(DynloraError, match="batch size 8.*has 5"):  # fewer examples than one batch
        registry.get("peft-eva").prepare(tiny_bert(), SETTINGS, 10, SEED, data=train_data(examples=5))
    with pytest.raises(DynloraError, match="'peft-eva' initialises its adapters from training batches"):
        prepare(tiny_bert(), run_config(dict(method="peft-eva")), 10)


@pytest.mark.slow
def test_dynlora_train_runs_it_with_its_flags(tiny_assets, tmp_path):
    from dynlora.cli import main

    model, data = tiny_assets
    run = tmp_path / "run"
    assert main(["train", "--model", model, "--dataset", data, "--method", "peft-eva", "--eva-rho", "1.5",
                 "--eva-batches", "4", "--rank", "4", "--max-steps", "3", "--batch-size", "8",
                 "--output", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    ranks = json.loads((run / "ranks.json").read_text())
    assert metrics["total_rank"] == metrics["budget"] == 4 * 13  # 13 targets of the 2-layer BERT, as LoRA's
    assert len(set(ranks.values())) > 1 and max(ranks.values()) <= 6  # round(4 x 1.5)
    options = json.loads((run / "run.json").read_text())["options"]
    assert (options["eva_rho"], options["eva_batches"]) == (1.5, 4)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]
