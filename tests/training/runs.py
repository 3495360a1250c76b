"""Shared by the resume and fault tests: a short run's options, and "this run equals that one"."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dynlora.training.arguments import run_config
from dynlora.training.config import RunConfig


def options(assets, out: Path, method: str, **extra) -> RunConfig:
    model, data = assets
    return run_config({**dict(model=model, dataset=data, method=method, max_steps=12, per_device_train_batch_size=8,
                               rank=4, learning_rate=5e-3, save_every=4, seed=3, output_dir=str(out)), **extra})


def decisions(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "replicas_agree"} for r in rows if "ranks" in r or "loss" in r]


def assert_same_run(a: Path, b: Path, measured: tuple[str, ...] | None = None) -> None:
    wa, wb = load_file(str(a / "adapter" / "adapter_model.safetensors")), load_file(
        str(b / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert json.loads((a / "ranks.json").read_text()) == json.loads((b / "ranks.json").read_text())
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    # the whole record, the loss averaged over the whole run and the counted memory included; only what a
    # clock or a sampled RSS measures (of this process's part of the run) may differ
    measured = MEASURED if measured is None else measured
    assert {k: v for k, v in ma.items() if k not in measured} == {k: v for k, v in mb.items() if k not in measured}
    assert decisions(a) == decisions(b)


MEASURED = ("train_seconds", "step_seconds", "peak_memory_mb")
