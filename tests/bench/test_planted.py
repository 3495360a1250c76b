"""bench/planted.py: the known answer, the report's arithmetic, and a tiny run (oracle beats uniform, every arm
spends exactly its budget, a rerun skips the rows done)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


planted = _load("planted")
NAMES = ["a", "b", "c", "d", "e", "f"]
ONE = {n: 1 for n in NAMES}


def test_the_oracle_raises_planted_modules_to_their_ranks_and_spends_the_rest_elsewhere():
    ranks = planted.oracle_ranks(NAMES, {"b": 3, "d": 2}, ONE, 12)
    assert ranks == {"a": 2, "b": 3, "c": 2, "d": 2, "e": 2, "f": 1}  # 6 at rank 1, +3 planted, 3 round-robin
    assert sum(ranks.values()) == 12


def test_under_a_budget_below_the_planted_total_free_ranks_go_to_the_most_missing():
    # 3 free ranks; b misses 3, d misses 1: each goes to whichever misses more (ties: model order)
    assert planted.oracle_ranks(NAMES, {"b": 4, "d": 2}, ONE, 9) == {"a": 1, "b": 4, "c": 1, "d": 1, "e": 1, "f": 1}
    assert planted.oracle_ranks(NAMES, {"b": 3, "d": 3}, ONE, 9) == {"a": 1, "b": 3, "c": 1, "d": 2, "e": 1, "f": 1}
    with pytest.raises(ValueError, match="cannot give every module"):
        planted.oracle_ranks(NAMES, {"b": 4}, ONE, 5)


def test_the_oracle_in_parameters_stays_within_the_budget_and_leaves_less_than_any_rank():
    costs = {"a": 10, "b": 30, "c": 10, "d": 20, "e": 10, "f": 30}
    budget = sum(2 * c for c in costs.values())  # plain LoRA at rank 2
    ranks = planted.oracle_ranks(NAMES, {"b": 4, "d": 1}, costs, budget)
    spent = sum(ranks[n] * costs[n] for n in NAMES)
    assert ranks["b"] == 4 and ranks["d"] == 1 and spent <= budget
    assert budget - spent < min(costs[n] for n in NAMES if n not in ("b", "d"))


def test_coverage_share_moves_and_gap_closed_on_hand_made_numbers():
    final, plant = {"a": 1, "b": 2, "d": 4}, {"b": 3, "d": 1}
    assert planted.coverage(final, plant) == pytest.approx((2 + 1) / 4)
    assert planted.planted_share(final, plant, {"a": 1, "b": 1, "d": 1}) == pytest.approx(6 / 7)
    assert planted.planted_share(final, plant, {"a": 10, "b": 1, "d": 1}) == pytest.approx(6 / 16)
    history = [{"a": 2, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 1}, {"a": 1, "b": 2, "c": 1}, {"a": 1, "b": 1, "c": 2}]
    assert planted.rank_moves(history) == 2
    assert planted.gap_closed(0.5, 0.3, 0.1) == pytest.approx(0.5)
    assert planted.gap_closed(0.5, 0.6, 0.1) == pytest.approx(-0.25)  # worse than uniform
    assert planted.gap_closed(0.5, 0.4, 0.6) is None  # no gap to close


def test_gaps_pair_each_row_with_uniform_and_oracle_of_its_own_seed():
    rows = [{"case": "planted", "avg_rank": 2.0, "method": m, "seed": s, "error": e}
            for m, s, e in (("uniform", 0, 0.4), ("oracle", 0, 0.2), ("l1ra", 0, 0.3),
                            ("uniform", 1, 0.5), ("oracle", 1, 0.1), ("l1ra", 1, 0.5))]
    gaps = {(r["method"], r["seed"]): r["gap_closed"] for r in planted.with_gaps(rows)}
    assert gaps[("l1ra", 0)] == pytest.approx(0.5) and gaps[("l1ra", 1)] == pytest.approx(0.0)
    assert gaps[("oracle", 1)] == pytest.approx(1.0)


def test_the_null_case_runs_at_the_first_budget_without_an_oracle():
    jobs = planted.jobs(["planted", "null"], [2.0, 1.25], ["uniform", "oracle", "l1ra"], [0, 1])
    assert len([j for j in jobs if j[0] == "planted"]) == 2 * 3 * 2
    assert {(j[1], j[2]) for j in jobs if j[0] == "null"} == {(2.0, "uniform"), (2.0, "l1ra")}


def test_a_row_done_again_replaces_the_old_one(tmp_path):
    path = tmp_path / "results.json"
    first = {"case": "planted", "avg_rank": 2.0, "method": "l1ra", "seed": 0, "error": 0.3}
    planted.append_row(path, first)
    planted.append_row(path, {**first, "seed": 1})
    planted.append_row(path, {**first, "error": 0.2})
    assert [(r["seed"], r["error"]) for r in planted.load_rows(path)] == [(1, 0.3), (0, 0.2)]


ARMS = ["uniform", "oracle", "l1ra", "adaptive", "module-alloc"]
FLAGS = ["--model", "tiny", "--steps", "60", "--lr", "1e-2", "--budgets", "2", "--cases", "planted",
         "--eval-size", "64", "--methods", ",".join(ARMS)]


def _args(out: Path, flags: list[str]):
    args = planted.parser().parse_args([*flags, "--output", str(out)])
    args.argv = flags
    return args


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("planted") / "planted-tiny"
    rows = planted.run(_args(out, FLAGS), log=lambda *a: None)
    return out, {r["method"]: r for r in rows}


def test_the_oracle_beats_uniform_by_a_clear_margin(tiny_run):
    _, rows = tiny_run
    # the known answer: the planted ranks fit the teacher far better than the even split (about 0.06 vs 0.10
    # over seeds 0-2 on this machine); 0.8 leaves room for other machines' rounding
    assert rows["oracle"]["error"] < 0.8 * rows["uniform"]["error"] < 0.8
    assert rows["oracle"]["coverage"] == 1.0 and rows["uniform"]["coverage"] == 0.5  # planted 6, 3, 1 at rank 2


def test_every_arm_ends_on_exactly_its_budget(tiny_run):
    _, rows = tiny_run
    assert set(rows) == set(ARMS)
    for arm, row in rows.items():
        assert row["budget"] == row["rank_budget"] == 24, arm  # average rank 2 over 12 modules
        assert sum(row["ranks"].values()) == row["spent"] == 24, arm
        assert math.isfinite(row["error"]) and 0 <= row["coverage"] <= 1, arm
    assert rows["uniform"]["moves"] == rows["oracle"]["moves"] == rows["module-alloc"]["moves"] == 0
    assert rows["l1ra"]["events"] > 0 and rows["adaptive"]["events"] > 0


def test_a_rerun_skips_the_rows_done_and_refuses_other_settings(tiny_run, monkeypatch):
    out, _ = tiny_run
    before = (out / "results.json").read_text()

    def no_training(*a, **k):
        raise AssertionError("a done row was trained again")

    monkeypatch.setattr(planted, "train_arm", no_training)
    planted.run(_args(out, FLAGS), log=lambda *a: None)
    assert (out / "results.json").read_text() == before
    with pytest.raises(SystemExit, match="give another --output"):
        planted.run(_args(out, [*FLAGS, "--steps", "61"]), log=lambda *a: None)


def test_the_summary_is_a_benchmarks_section(tiny_run):
    out, rows = tiny_run
    text = (out / "summary.md").read_text()
    assert text.startswith("# Known-answer allocation") and "| oracle | " in text and "L0.ffn.in *6" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["methods"] == ARMS and meta["seeds"] == [0]
    bench = _load("benchmarks_md")
    page = bench.build(out.parent, out.parent)
    assert "## Known-answer allocation" in page and "Results folder: `planted-tiny/`" in page


@pytest.mark.xfail(strict=False, reason="the allocators' importance signals are being fixed; until then the "
                                        "rank-moving methods do not find the planted ranks (bench/results/planted-*)")
def test_the_rank_moving_methods_close_most_of_the_gap(tiny_run):
    _, rows = tiny_run
    gap = rows["uniform"]["error"] - rows["oracle"]["error"]
    for arm in ("l1ra", "adaptive"):
        assert rows["uniform"]["error"] - rows[arm]["error"] >= 0.5 * gap, arm
        assert rows[arm]["coverage"] > rows["uniform"]["coverage"], arm
