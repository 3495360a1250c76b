"""The launch configs TRL users already run: TRL's own ``accelerate`` config files, two CPU processes.

On a machine without an accelerator only the data-parallel one runs as itself: accelerate turns TRL's
``fsdp2.yaml`` with ``use_cpu: true`` into plain DDP, and sets its FSDP and DeepSpeed states up only over
an accelerator (``docs/engines.md``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("trl")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trl_config(name: str, folder: Path, **overrides: object) -> Path:
    """TRL's shipped accelerate config ``name`` with ``overrides`` (two CPU processes), written to ``folder``."""
    import trl

    config = yaml.safe_load((Path(trl.__file__).parent / "accelerate_configs" / name).read_text())
    config.update(overrides)
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow  # two fresh processes under accelerate launch: about 15 s each on CI's 2 cores; make test-slow
@pytest.mark.parametrize("method,slots", [("l1ra", None), ("module-alloc", None), ("l1ra", 16), ("adaptive", 16),
                                          ("module-alloc", 16)])
def test_trl_s_multi_gpu_config_trains_through_rank_changes_with_replicas_in_step(tiny_lm, tmp_path, method, slots):
    """With the mixin, or (rank slots: nothing changes shape) with TRL's own SFTTrainer and only the two lines."""
    from safetensors.torch import load_file

    config = trl_config("multi_gpu.yaml", tmp_path, num_processes=2, use_cpu=True, mixed_precision="no",
                        main_process_port=free_port())  # not the default 29500, which the last run may hold still
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = Path(__file__).with_name("sft_worker.py")
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           str(worker), str(tiny_lm), str(out), method, *([str(slots)] if slots else [])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    checked = [r for d, r in zip(run["decisions"], run["replicas"]) if d[0] > 0]
    assert checked and checked == [2] * len(checked)  # both processes agreed after every event
    assert sum(run["ranks"].values()) == 4 * len(run["ranks"])  # the budget held
    if method != "module-alloc":
        assert any(set(d[2].values()) != {4} for d in run["decisions"])  # ranks moved
    zero, one = load_file(str(out / "adapters-0.safetensors")), load_file(str(out / "adapters-1.safetensors"))
    for key in zero:
        torch.testing.assert_close(one[key], zero[key], atol=0, rtol=0, msg=key)


def run_fsdp_worker(tiny_lm: Path, out: Path, method: str, config: Path | None, *extra: str) -> None:
    """The two-line script of ``fsdp_sft_worker.py`` under ``config`` (two processes), or in one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = Path(__file__).with_name("fsdp_sft_worker.py")
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(config)] if config is not None else []
    done = subprocess.run([sys.executable, *launcher, str(worker), str(tiny_lm), str(out), method, *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def peft_logits(tiny_lm: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow  # five fresh processes per method: about 45 s each on CI's 2 cores; make test-slow
@pytest.mark.parametrize("method", ["l1ra", "adaptive", "module-alloc"])
def test_trl_s_fsdp2_config_trains_resumes_and_exports_as_one_process(tiny_lm, tmp_path, method):
    """accelerate's FSDP2 path (TRL's ``fsdp2.yaml``, the state accelerate keeps for accelerators set on the CPU:
    ``fsdp_on_cpu.py``): the adapters are sharded DTensors holding 16 rank slots; ranks move (or adapters switch),
    the budget holds, both processes agree after every event, a resume from the step-6 checkpoint is bit-exact,
    and the run matches one process at the same global batch to float rounding, exported adapter included."""
    from safetensors.torch import load_file

    config = trl_config("fsdp2.yaml", tmp_path, num_processes=2, use_cpu=True, mixed_precision="no",
                        main_process_port=free_port())
    sharded, alone = tmp_path / "fsdp2", tmp_path / "one"
    run_fsdp_worker(tiny_lm, sharded, method, config)
    saved = {p.name for p in (sharded / "work" / "checkpoint-6").iterdir()}
    # under the mixin a checkpoint holds the adapters and the optimizer, not accelerate's file of the whole model
    assert ("pytorch_model_fsdp.bin" in saved) == (method != "module-alloc") and "optimizer.bin" in saved, saved
    shutil.rmtree(sharded / "work" / "checkpoint-12")
    config = trl_config("fsdp2.yaml", tmp_path, num_processes=2, use_cpu=True, mixed_precision="no",
                        main_process_port=free_port())
    run_fsdp_worker(tiny_lm, sharded, method, config, "resume")
    run_fsdp_worker(tiny_lm, alone, method, None)
    run, resumed, one = (json.loads((folder / name).read_text()) for folder, name in
                         ((sharded, "run.json"), (sharded, "run-resumed.json"), (alone, "run.json")))
    assert run["fsdp"] and run["parameters"] == "DTensor" and one["parameters"] == "Parameter"
    assert run["replicas"] and run["replicas"] == [2] * len(run["replicas"])  # both agreed after every event
    assert sum(run["ranks"].values()) == 4 * len(run["ranks"])  # the budget held
    if method == "module-alloc":
        assert len({tuple(sorted(d[3])) for d in run["decisions"]}) > 1  # the trained set switched
    else:
        assert len(set(run["ranks"].values())) > 1  # ranks moved inside the slots
    # the resume: every logged loss, every decision and every final adapter tensor identical
    assert resumed["losses"] == run["losses"] and resumed["decisions"] == run["decisions"]
    final, again = load_file(str(sharded / "final.safetensors")), load_file(str(sharded / "final-resumed.safetensors"))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    # one process, the same 8 examples a step: the same decisions; losses and tensors to float rounding (the
    # two processes sum their halves of each gradient in another order)
    assert one["decisions"] == run["decisions"] and one["ranks"] == run["ranks"]
    torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(one["losses"]), atol=1e-5, rtol=0)
    single = load_file(str(alone / "final.safetensors"))
    for key in final:
        torch.testing.assert_close(final[key], single[key], atol=1e-5, rtol=0, msg=key)
    ids = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(peft_logits(tiny_lm, sharded / "adapter", ids), peft_logits(tiny_lm, alone / "adapter", ids),
                               atol=1e-5, rtol=0)
