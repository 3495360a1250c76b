"""``dynlora train`` under torchrun with accelerate's FSDP state set on the CPU (``tests/hf/fsdp_on_cpu.py``):
accelerate sets it up only over accelerators. Arguments: the ``dynlora`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))
from fsdp_on_cpu import on_cpu  # noqa: E402

import dynlora.training.fit as fit  # noqa: E402
from dynlora.cli import main  # noqa: E402

fit.DynloraTrainer = on_cpu(fit.DynloraTrainer)
sys.exit(main(sys.argv[1:]))
