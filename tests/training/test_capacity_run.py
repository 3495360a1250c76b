"""A run whose adapters hold a fixed capacity of rank slots (``--capacity``): the decisions of the same run
capped at that rank, parameters that never change shape, an export at the live ranks, and under
``--torch_compile`` no graph per rank event."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train
from tests.training.runs import decisions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ADAPTIVE = {"interval": 3, "warmup": 0.0, "max_moves": 0.5}


def run(tiny_assets, out, **values):
    model, data = tiny_assets
    return train(run_config({"model": model, "dataset": data, "method": "adaptive:no-gate", "max_steps": 12,
                             "per_device_train_batch_size": 8, "rank": 2, "learning_rate": 5e-3, "seed": 3,
                             "save_every": 0, "output_dir": str(out), **values}), log=lambda s: None)


def test_a_capacity_run_decides_as_the_run_capped_at_it_and_exports_its_live_ranks(tiny_assets, tmp_path):
    capped = run(tiny_assets, tmp_path / "capped", method_config={**ADAPTIVE, "max_rank": 4})
    slotted = run(tiny_assets, tmp_path / "slotted", capacity=4, method_config=ADAPTIVE)
    ours, theirs = decisions(tmp_path / "slotted"), decisions(tmp_path / "capped")
    assert [r.get("ranks") for r in ours] == [r.get("ranks") for r in theirs]
    ranks = json.loads((tmp_path / "slotted" / "ranks.json").read_text())
    assert len(set(ranks.values())) > 1 and max(ranks.values()) <= 4  # ranks moved, within the slots
    assert slotted["total_rank"] == capped["total_rank"] and slotted["accuracy"] == capped["accuracy"]
    tensors = load_file(str(tmp_path / "slotted" / "adapter" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "slotted" / "adapter" / "adapter_config.json").read_text())
    for name, rank in ranks.items():
        a = next(v for k, v in tensors.items() if k.endswith(f"{name}.lora_A.weight"))
        assert a.shape[0] == rank and config["rank_pattern"].get(name, config["r"]) == rank  # live ranks only
    theirs = load_file(str(tmp_path / "capped" / "adapter" / "adapter_model.safetensors"))
    for key, value in tensors.items():
        torch.testing.assert_close(value, theirs[key], atol=1e-5, rtol=1e-4)  # the same adapter, to rounding


def test_a_capacity_below_a_starting_rank_is_refused(tiny_assets, tmp_path):
    from dynlora.errors import DynloraError

    with pytest.raises(DynloraError, match="capacity 1 is below the rank 2"):
        run(tiny_assets, tmp_path / "x", capacity=1)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # two compiled runs: about 14 s on CI's 2 cores (tests/core/test_capacity.py has the fast one)
def test_torch_compile_with_a_capacity_compiles_no_graph_per_rank_event(tiny_assets, tmp_path):
    from torch._dynamo.utils import counters

    graphs, moving = {}, {}
    for label, extra in (("capacity", {"capacity": 4}), ("resized", {"method_config": {**ADAPTIVE, "max_rank": 4}})):
        torch._dynamo.reset()
        counters.clear()
        values = {"method_config": ADAPTIVE, **extra, "torch_compile": True, "torch_compile_backend": "eager"}
        run(tiny_assets, tmp_path / label, **values)
        graphs[label] = counters["stats"]["unique_graphs"]
        moving[label] = sum(1 for r in decisions(tmp_path / label) if r.get("event") == "realloc" and r.get("moved"))
    assert moving["capacity"] == moving["resized"] >= 2
    # each event that moved ranks compiled the resized model again; the slots' model compiled once after the
    # first mask flip, then never again
    assert graphs["resized"] >= graphs["capacity"] + moving["resized"] and graphs["capacity"] <= 2, graphs


@pytest.mark.slow  # four compiled runs: about 40 s on CI's 2 cores
def test_torch_compile_with_a_capacity_compiles_no_graph_per_module_switch(tiny_assets, tmp_path):
    """Module allocation switches which adapters train: with requires_grad each new trained set compiles more
    graphs; in rank slots a switch flips a mask, and a 12-step run compiles what its first 3 steps (one
    selection) did."""
    from torch._dynamo.utils import counters

    graphs, sets = {}, {}
    for label, extra in (("capacity", {"capacity": 2}), ("switched", {})):
        for steps in (3, 12):
            torch._dynamo.reset()
            counters.clear()
            values = {"method": "module-alloc:multinomial", "method_config": {"schedule": "every:2"}, **extra,
                      "torch_compile": True, "torch_compile_backend": "eager", "max_steps": steps}
            run(tiny_assets, tmp_path / f"{label}-{steps}", **values)
            graphs[label, steps] = counters["stats"]["unique_graphs"]
        sets[label] = {tuple(sorted(r["active"])) for r in decisions(tmp_path / f"{label}-12")
                       if r.get("event") == "select"}
    assert sets["capacity"] == sets["switched"] and len(sets["capacity"]) >= 3  # the same selections
    assert graphs["capacity", 12] == graphs["capacity", 3], graphs  # no graph for any later switch
    assert graphs["switched", 12] > graphs["switched", 3], graphs  # each new trained set: more graphs
