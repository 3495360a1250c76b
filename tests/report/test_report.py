import json

import pytest

from dynlora.cli import main
from dynlora.report.run_report import gains_table, module_type, rank_by_type, read_history, type_gains, write_report

NAMES = [f"bert.encoder.layer.{i}.{t}" for i in range(2) for t in ("attention.self.query", "output.dense")]


def _run_dir(tmp_path):
    start = {n: 4 for n in NAMES}
    end = dict(start)
    end[NAMES[0]], end[NAMES[1]] = 1, 7  # query gives 3 ranks to output.dense
    history = [{"step": 0, "event": "init", "ranks": start}, {"step": 5, "event": "log", "loss": 0.5},
               {"step": 10, "event": "realloc", "ranks": end}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (tmp_path / "ranks.json").write_text(json.dumps(end))
    (tmp_path / "gates.json").write_text(json.dumps({n: [0.1 * k for k in range(r)] for n, r in end.items()}))
    return tmp_path


def test_types_and_gains(tmp_path):
    assert module_type(NAMES[1], NAMES) == "output.dense"
    assert module_type("model.layers.3.mlp.down_proj") == "mlp.down_proj"
    assert rank_by_type({NAMES[0]: 2, NAMES[2]: 3}) == {"attention.self.query": 5}
    history = read_history(_run_dir(tmp_path) / "history.jsonl")
    gains = {g["type"]: g["change"] for g in type_gains(history)}
    assert gains == {"output.dense": 3, "attention.self.query": -3}


def test_write_report_and_cli(tmp_path, capsys):
    run = _run_dir(tmp_path)
    files = write_report(run)
    assert {p.name for p in files} == {"rank_heatmap.png", "rank_by_type.png", "rank_by_type.json", "gates.png"}
    assert all(p.stat().st_size > 1000 for p in files if p.suffix == ".png")
    assert "output.dense" in gains_table(run)
    assert main(["report", str(run)]) == 0
    assert "+3" in capsys.readouterr().out


def test_report_of_a_non_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag,value", [("--l1ra-interval", "0"), ("--l1ra-interval", "2.5"),
                                        ("--l1ra-lambda", "-1"), ("--l1ra-threshold", "2"), ("--rank-budget", "0")])
def test_bad_l1ra_flags(flag, value, tmp_path, capsys):
    code = main(["train", "--method", "l1ra", flag, value, "--max-steps", "1", "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_activity_map_for_module_alloc(tmp_path):
    history = [{"step": 0, "event": "init", "ranks": {n: 4 for n in NAMES}},
               {"step": 3, "event": "select", "active": NAMES[:2], "ranks": {n: 4 for n in NAMES}},
               {"step": 6, "event": "select", "active": NAMES[1:3], "ranks": {n: 4 for n in NAMES}}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (tmp_path / "ranks.json").write_text(json.dumps({n: 4 for n in NAMES}))
    files = {p.name for p in write_report(tmp_path)}
    assert "activity.png" in files and (tmp_path / "report" / "activity.png").stat().st_size > 1000
