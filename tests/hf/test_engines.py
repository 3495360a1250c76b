"""The launch configs TRL users already run: TRL's own ``accelerate`` config files, two CPU processes.

On a machine without an accelerator only the data-parallel one runs as itself: accelerate turns TRL's
``fsdp2.yaml`` with ``use_cpu: true`` into plain DDP, and sets its FSDP and DeepSpeed states up only over
an accelerator (``docs/engines.md``)."""

from __future__ import annotations

import json
import os
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
@pytest.mark.parametrize("method,slots", [("l1ra", None), ("module-alloc", None), ("l1ra", 16), ("adaptive", 16)])
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
