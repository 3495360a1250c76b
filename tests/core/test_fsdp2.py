"""Adapters that FSDP2 shards: with a fixed capacity of rank slots, ranks move inside the sharded parameters and
two processes train exactly as one does; without one, a resize stops with one line saying what to set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def launch(tiny_lm: Path, out: Path, processes: int, method: str, capacity: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = Path(__file__).with_name("fsdp2_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), str(worker), str(tiny_lm), str(out), method, capacity],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"run-{r}.json").read_text()) for r in range(processes)]


@pytest.mark.slow  # three fresh processes: about 25 s on CI's 2 cores; make test-slow runs it
def test_fsdp2_with_rank_slots_trains_as_one_process_and_ranks_move(tiny_lm, tmp_path):
    (alone,) = launch(tiny_lm, tmp_path / "one", 1, "adaptive", "16")
    zero, one = launch(tiny_lm, tmp_path / "fsdp2", 2, "adaptive", "16")
    assert zero["parameters"] == "DTensor" and alone["parameters"] == "Parameter"  # sharded, and not
    assert zero["error"] is None and len(set(zero["ranks"].values())) > 1  # ranks moved inside the slots
    assert zero["ranks"] == one["ranks"] == alone["ranks"]
    assert zero["losses"] == one["losses"] == alone["losses"]  # the same batch everywhere: the same run
    assert [e[2] for e in zero["events"]] == [2] * len(zero["events"])  # both processes agreed at each event
    from safetensors.torch import load_file

    ours, theirs = load_file(str(tmp_path / "fsdp2" / "adapter-0.safetensors")), load_file(
        str(tmp_path / "one" / "adapter-0.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same export
    ranks = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): v.shape[0]
             for k, v in ours.items() if k.endswith("lora_A.weight")}
    assert ranks == zero["ranks"]  # the live ranks only, not the slots


@pytest.mark.slow
def test_fsdp2_without_a_capacity_stops_at_the_first_resize_naming_it(tiny_lm, tmp_path):
    zero, _ = launch(tiny_lm, tmp_path / "fsdp2", 2, "adaptive", "none")
    assert "--capacity" in zero["error"] and zero["losses"]
