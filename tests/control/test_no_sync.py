"""No host synchronisation on steps without a decision: on such a step the controller, the trackers
and the per-step hooks (L1RA's proximal step, adaptive's fade) never read a tensor back to the host.

On this CPU the reads are made to raise (``item``, ``tolist``, ``float``, ``int``, ``bool``, ``numpy``)
while the controller steps; on a GPU the same holds under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, inject
from dynlora.methods.adaptive import Adaptive, AdaptiveConfig
from dynlora.methods.l1ra import L1RA, L1RAConfig, gate_param_groups
from dynlora.methods.module_alloc import ModuleAlloc, ModuleAllocConfig
from tests.conftest import tiny_bert

STEPS = 12
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")


@contextlib.contextmanager
def no_reads() -> Iterator[None]:
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def refuse(name: str):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} on a step without a decision: a host sync")
        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def _methods():
    return {
        "l1ra": (L1RA(L1RAConfig(lam=2.0, lr_c=0.05, interval=4), STEPS), True),
        "module-alloc:activation": (ModuleAlloc(ModuleAllocConfig(schedule="every:4", score="activation"), STEPS),
                                    False),
        "module-alloc:gradient": (ModuleAlloc(ModuleAllocConfig(schedule="every:4", score="gradient", decay=0.5),
                                              STEPS), False),
        "adaptive": (Adaptive(AdaptiveConfig(interval=3, warmup=2, input_gate=False), STEPS), False),
        "adaptive:activation": (Adaptive(AdaptiveConfig(interval=3, warmup=2, score="activation",
                                                        input_gate=False), STEPS), False),
        "adaptive:gate": (Adaptive(AdaptiveConfig(interval=3, warmup=2, score="gate", input_gate=False), STEPS), True),
    }


@pytest.mark.parametrize("name", sorted(_methods()))
def test_steps_without_a_decision_never_read_the_device(name):
    method, gated = _methods()[name]
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=gated, fade=True), generator=torch.Generator().manual_seed(0))
    groups = gate_param_groups(model, 1e-2, method.config) if name == "l1ra" else \
        [{"params": [p for p in model.parameters() if p.requires_grad]}]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    controller = Controller(model, method, optimizer=opt, seed=0)
    decisions = 0
    model.train()
    for step in range(1, STEPS + 1):
        g = torch.Generator().manual_seed(step)
        ids, labels = torch.randint(1, 100, (8, 10), generator=g), torch.randint(0, 2, (8,), generator=g)
        torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
        opt.step()
        if method.schedule.fires(step):
            controller.step()  # a decision may read its scores back: once, at the event
            decisions += 1
        else:
            with no_reads():
                controller.step()
        opt.zero_grad()
    events = [e for e in controller.history if e.event != "init" and e.step > 0]  # step 0: a probe's start, no read
    assert decisions >= 2 and len(events) == decisions
