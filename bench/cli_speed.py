"""How fast the ``dynlora`` command answers ``--help`` and a bad flag, against ``python -c "import torch"``.

Each command runs as a whole new process, ``--rounds`` times, interleaved (one of each per round) so that
machine noise hits all of them alike; the table gives each one's median wall time and its ratio to
importing torch. ``first`` is the first ``train --help`` with an empty parser cache (it builds the real
parser and caches its snapshot); the rest run with the cache as every later call finds it.
``--reference DIR`` times that checkout's ``dynlora.cli`` too (with this interpreter), for a before/after.

    python bench/cli_speed.py [--rounds 7] [--reference /path/to/older/checkout] [--out bench/results/cli-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

CASES = {
    "import torch": ["-c", "import torch"],
    "dynlora --help": ["-m", "dynlora.cli", "--help"],
    "dynlora train --help": ["-m", "dynlora.cli", "train", "--help"],
    "dynlora train --rank eight": ["-m", "dynlora.cli", "train", "--rank", "eight"],
}


def _time(argv: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reference", default=None, help="an older checkout to time beside this one")
    parser.add_argument("--out", default=None, help="folder for results.json")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="dynlora-cli-bench-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DYNLORA_CACHE": cache}
    first = _time(CASES["dynlora train --help"], env)  # empty cache: builds and caches the snapshot
    cases = dict(CASES)
    if args.reference:
        cases.update({f"before: {name}": argv for name, argv in CASES.items() if name != "import torch"})
    times: dict[str, list[float]] = {name: [] for name in cases}
    ref_env = {**env, "PYTHONPATH": str(Path(args.reference).resolve())} if args.reference else env
    for _ in range(args.rounds):
        for name, argv in cases.items():
            before = name.startswith("before: ")
            times[name].append(_time(argv, ref_env if before else env, args.reference if before else None))
    torch_s = statistics.median(times["import torch"])
    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "ratio_to_import_torch": statistics.median(t) / torch_s} for name, t in times.items()}
    rows["dynlora train --help (first, empty cache)"] = {"median_s": first, "min_s": first, "max_s": first,
                                                         "ratio_to_import_torch": first / torch_s}
    data = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "rounds": args.rounds,
            "command": "python bench/cli_speed.py " + " ".join(sys.argv[1:]), "rows": rows}
    print(table(data))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(data, indent=1))
        (out / "summary.md").write_text(summary_markdown(data))


def table(data: dict) -> str:
    lines = ["| command | median s | min-max s | / import torch |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {r['ratio_to_import_torch']:.2f} |"
              for name, r in data["rows"].items()]
    return "\n".join(lines)


def summary_markdown(data: dict) -> str:
    """The results as a BENCHMARKS.md section (``bench/benchmarks_md.py`` collects it)."""
    return (f"# How fast the command answers: --help and a bad flag\n\n"
            f"- command: `{data['command']}`\n- machine: {data['machine']}, Python {data['python']}; {data['date']}\n"
            f"- each a new process, {data['rounds']} rounds interleaved; `before:` is the checkout before the "
            "parser snapshot (every command's flags built from transformers and the methods)\n\n"
            + table(data) + "\n")


if __name__ == "__main__":
    main()
