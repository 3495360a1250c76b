"""L1RA x module allocation: L1RA's gates and rank reallocation over only the adapters the selector keeps
training — the module-allocation paper's own future work (compatibility with rank pruning).

Module allocation picks, on its schedule, the adapters that train; between selections L1RA's proximal
step shrinks only their gates (a frozen adapter's gate does not train, so it must not decay either), and
on L1RA's schedule the ranks they free go to the other adapters that train. Frozen adapters keep their
ranks. The config (``l1ra_alloc_config.L1RAAllocConfig``, written from both methods' configs) holds both
methods' knobs under their own flags (``--l1ra-lambda``, ``--k``, ``--schedule``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.decide.plan import Plan
from dynlora.decide.schedule import AnyOf
from dynlora.methods.base import AdapterNeeds, MethodBase, MethodSpec, View
from dynlora.methods.l1ra import L1RA, gate_param_groups
from dynlora.methods.l1ra_alloc_config import L1RAAllocConfig
from dynlora.methods.module_alloc import ModuleAlloc
from dynlora.methods.registry import register

class L1RAAlloc(MethodBase):
    """Select the adapters that train; move ranks among them only."""

    name = "l1ra-alloc"

    def __init__(self, config: L1RAAllocConfig, total_steps: int) -> None:
        self.config = config
        self.rank = L1RA(config.rank_config(), total_steps)
        self.select = ModuleAlloc(config.select_config(), total_steps)
        self.trackers = self.select.trackers + self.rank.trackers
        self.schedule = AnyOf((self.rank.schedule, self.select.schedule))
        self.active: tuple[str, ...] | None = None  # None: every adapter trains (before the first selection)

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        self.rank.attach(layers)
        self.select.attach(layers)

    def start(self, view: View) -> Plan | None:
        plan = self.select.start(view)
        if plan is not None:
            self.active = plan.active
        return plan

    def _training(self, view: View) -> View:
        return view.subset(self.active) if self.active is not None else view

    def per_step(self, step: int, view: View) -> None:
        self.rank.per_step(step, self._training(view))

    def own_lrs(self, layers: Mapping[str, LoraLayer]) -> dict[nn.Parameter, float]:
        return self.rank.own_lrs(layers)

    def decide(self, step: int, view: View) -> list[Plan]:
        """L1RA's reallocation among the adapters that trained, then (when due) the next selection."""
        plans = []
        if self.rank.schedule.fires(step):
            plans.append(self.rank.decide(step, self._training(view)))
        if self.select.schedule.fires(step):
            plan = self.select.decide(step, view)
            self.active = plan.active
            plans.append(plan)
        return plans

    def state_dict(self) -> dict[str, Any]:
        return {"rank": self.rank.state_dict(), "select": self.select.state_dict(),
                "active": list(self.active) if self.active is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rank.load_state_dict(state.get("rank", {}))
        self.select.load_state_dict(state.get("select", {}))
        self.active = tuple(state["active"]) if state.get("active") is not None else None


SPEC = register(MethodSpec(
    name="l1ra-alloc",
    help="L1RA's rank reallocation over only the adapters module allocation keeps training",
    config=L1RAAllocConfig,
    build=L1RAAlloc,
    needs=lambda config: AdapterNeeds(gate=True),
    param_groups=lambda model, lr, config, weight_decay: gate_param_groups(model, lr, config.rank_config(),
                                                                           weight_decay),
    min_rank=lambda config: config.min_rank,
    report_panels=("rank_by_type", "gates", "activity"),
))
