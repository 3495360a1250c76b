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


BAD_FLAGS = {  # one mistake per command, and the type error a new user makes first
    "train": ["--rank", "eight"], "export": ["run", "--output", "out", "--pad-rank", "two"],
    "compare": ["--seeds"], "report": [], "generate": ["--adapter", "a", "hi", "--no-such-flag"],
    "serve": ["x", "--port", "http"]}


def _expected(argv: list[str], capsys) -> tuple[int, str, str]:
    """What the real parser (every flag built from its libraries, in this process) prints for ``argv``."""
    from dynlora.cli import _parse, build_parser

    with pytest.raises(SystemExit) as stop:
        _parse(build_parser(argv[0] if argv else ""), argv)
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """The environment of a ``dynlora`` process with a parser cache of its own, already holding the snapshots
    (made here, in a process that has the libraries imported anyway)."""
    from dynlora.cli import HEAVY_FLAGS, cache_parser

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNLORA_CACHE", str(cache))
        mp.setenv("COLUMNS", "100")
        assert all(cache_parser(command) for command in HEAVY_FLAGS)  # a snapshot is kept only if it prints the same
        yield {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("command", ["", *BAD_FLAGS])
@pytest.mark.parametrize("mistake", [False, True])
def test_help_and_a_bad_flag_print_exactly_what_the_real_parser_does_in_a_real_process(cli_env, capsys, command,
                                                                                       mistake, monkeypatch):
    if mistake and not command:
        pytest.skip("the top-level parser has no flag but --help")
    argv = [command] if command else []
    argv += BAD_FLAGS[command] if mistake else ["--help"]
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = _expected(argv, capsys)
    proc = subprocess.run([sys.executable, "-m", "dynlora.cli", *argv], capture_output=True, text=True, env=cli_env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, out, err)
    if mistake:
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("dynlora: error: ")
    else:
        assert code == 0 and err == "" and out.startswith("usage: dynlora")


def test_help_and_a_bad_flag_import_no_library_and_the_first_call_caches_the_snapshot(cli_env, tmp_path):
    probe = ("import sys, os; from pathlib import Path; from dynlora.cli import main\n"
             "def run(argv):\n"
             "    try: main(argv)\n"
             "    except SystemExit: pass\n"
             "for argv in (['train', '--help'], ['train', '--rank', 'eight'], ['compare', '--help'], ['--help']):\n"
             "    run(argv)\n"
             "print('loaded:', sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'numpy')\n"
             "                        if m in sys.modules))\n"
             "os.environ['DYNLORA_CACHE'] = sys.argv[1]  # an empty cache: this call builds the real parser\n"
             "run(['compare', '--help'])\n"
             "print('snapshots:', len(list(Path(sys.argv[1], 'parsers').glob('compare-*.json'))))")
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=cli_env)
    said = [line for line in proc.stdout.splitlines() if line.startswith(("loaded:", "snapshots:"))]
    assert said == ["loaded: []", "snapshots: 1"], proc.stdout[-2000:] + proc.stderr
