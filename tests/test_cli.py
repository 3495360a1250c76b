"""Bad input: one line naming the bad value, exit code 2, nothing written."""

import argparse
import os
import subprocess
import sys

import pytest

from dynlora.cli import main


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("argv,needle", [
    (["--task", "sst2"], "sst2"),
    (["--method", "magic"], "magic"),
    (["--model", "/no/such/model"], "/no/such/model"),
    (["--rank", "0"], "rank"),
    (["--rank", "-3"], "rank"),
    (["--targets", "nonexistent_proj"], "nonexistent_proj"),
    (["--task", "trec6", "--train-size", "-5"], "train_size"),
])
def test_bad_train_input(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _run(["train", *argv, "--max-steps", "1", "--output", str(out)], capsys)
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("dynlora: error:")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_dataset_files(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text,stars\nhello,1\nworld,2\nagain,1\n")
    for path, needle in [(empty, "empty.csv"), (nolabel, "label"), (tmp_path / "missing.jsonl", "missing.jsonl")]:
        code, err = _run(["train", "--dataset", str(path), "--output", str(tmp_path / "run")], capsys)
        assert code == 2 and needle in err and len(err.splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_output_that_is_not_a_run_is_refused(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    code, err = _run(["train", "--max-steps", "1", "--output", str(taken)], capsys)
    assert code == 2 and str(taken) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (taken / "precious.txt").read_text() == "keep me"


def test_export_of_a_non_run_is_refused(tmp_path, capsys):
    code, err = _run(["export", str(tmp_path), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and str(tmp_path) in err and not (tmp_path / "out").exists()


def test_argparse_errors_exit_2_in_a_real_process():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dynlora.cli", "train", "--rank", "eight"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and "eight" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_every_flag_of_every_command_has_a_line_of_help():
    from dynlora.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = {name: [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
               for name, sub in commands.items()}
    assert not any(missing.values()), missing
