"""The documentation (``docs/``, ``mkdocs.yml``): the site builds with warnings as errors, every Python
code block runs on tiny models, every other block says why it is not run (or which test runs it), and
every ``dynlora`` command in the docs parses with the real command line."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
MARK = re.compile(r"<!-- (not run: .+|runs in (tests/\S+\.py)) -->$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str | None  # the comment on the line before the fence

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the marker comment right before it (if any)."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang = i, lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            mark = MARK.match(lines[start - 1]) if start else None
            found.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n",
                               mark.group(1) if mark else None))
            i = end
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_the_docs_hold_the_guides_the_readme_points_to():
    names = {p.relative_to(ROOT / "docs").as_posix() for p in PAGES}
    assert {"index.md", "getting-started.md", "trainer.md", "precision.md", "serving.md", "distributed.md",
            "resume.md", "benchmarks.md", "reference.md", "methods/l1ra.md", "methods/module-alloc.md",
            "methods/adaptive.md"} <= names
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target
    assert len(readme.splitlines()) <= 80, "the README is the two-screen overview; the rest goes to docs/"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang != "python" or b.mark], ids=str)
def test_a_block_that_is_not_run_says_why_or_where_it_runs(block):
    assert block.mark, f"{block}: a {block.lang or 'plain'} block needs <!-- not run: why --> or <!-- runs in test -->"
    if block.mark.startswith("runs in "):
        test = ROOT / block.mark.removeprefix("runs in ")
        flat = "\n".join(line.strip() for line in test.read_text().splitlines())
        code = "\n".join(line.strip() for line in block.code.splitlines())
        assert code in flat, f"{block}: not the code {test.name} runs"


def _commands(code: str) -> list[list[str]]:
    """Each ``dynlora ...`` command of a shell block (continuation lines joined, comments dropped)."""
    text = code.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if "dynlora" in words:  # also `.venv/bin/dynlora`, `-m dynlora.cli` is checked by its own tests
            out.append(words[words.index("dynlora") + 1:])
    return out


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "bash" and _commands(b.code)], ids=str)
def test_every_dynlora_command_in_the_docs_parses(block):
    from dynlora.cli import build_parser

    for argv in _commands(block.code):
        parser = build_parser(argv[0])
        try:
            parser.parse_args(argv)
        except SystemExit as exit:
            pytest.fail(f"{block}: `dynlora {' '.join(argv)}` does not parse (exit {exit.code})")


@pytest.fixture
def scope(tmp_path, monkeypatch, one_torch_thread):
    """What a Python block may use: a tiny BERT (``tiny_bert()``, or saved in ``folder``), a fresh ``model``
    and a ``loader`` of labelled batches; it runs in an empty folder."""
    monkeypatch.chdir(tmp_path)
    tiny_bert().save_pretrained(tmp_path / "tiny-bert")
    g = torch.Generator().manual_seed(0)
    loader = [{"input_ids": torch.randint(1, 100, (4, 10), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
              for _ in range(3)]
    import dynlora

    return {"dynlora": dynlora, "torch": torch, "tiny_bert": tiny_bert, "folder": str(tmp_path / "tiny-bert"),
            "loader": loader, "model": tiny_bert()}


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python" and not b.mark], ids=str)
def test_every_python_block_runs(block, scope):
    exec(compile(block.code, str(block), "exec"), scope)  # noqa: S102 - the docs' own code


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count("get_dynamic_model") > 0
