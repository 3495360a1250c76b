"""``dynlora train`` under torchrun with accelerate's FSDP state set on the CPU (``tests/hf/fsdp_on_cpu.py``):
accelerate sets it up only over accelerators. Arguments: the ``dynlora`` command line. With
``DYNLORA_TEST_STOP_AT=N`` every process stops at the end of optimizer step N, as a kill would."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))
from fsdp_on_cpu import on_cpu  # noqa: E402

import dynlora.training.fit as fit  # noqa: E402
from dynlora.cli import main  # noqa: E402


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"stopped at step {self.step}")


class Trainer(on_cpu(fit.DynloraTrainer)):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stop = os.environ.get("DYNLORA_TEST_STOP_AT")
        if stop:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), StopAt(int(stop))]
        super().__init__(*args, **kwargs)


fit.DynloraTrainer = Trainer
sys.exit(main(sys.argv[1:]))
