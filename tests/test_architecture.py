"""The shape of the package: layers that only import downward, no import circle, a torch-only core,
and shared code that never names a method (methods live in ``dynlora/methods`` and register)."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "dynlora"
# lowest first; a module may import its own layer and the layers below it, never one above
LAYERS = ("errors", "cache", "core", "observe", "decide", "methods", "control", "io", "report", "hf", "data", "training",
          "tools", "cli")


def module_name(path: Path) -> str:
    parts = ["dynlora", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every dynlora module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("dynlora")}
    return found


GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_at_least_six_subpackages_each_a_layer():
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert len(packages) >= 6 and set(packages) <= set(LAYERS), packages


def test_no_import_runs_up_a_layer():
    upward = [(a, b) for a, targets in GRAPH.items() for b in targets
              if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a)]
    assert upward == []


def test_no_import_circle():
    state: dict[str, int] = {}
    path: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert circles == []


@pytest.mark.parametrize("module", ["dynlora", "dynlora.core", "dynlora.core.layer"])
def test_light_imports_load_neither_transformers_nor_peft(module):
    code = (f"import sys, {module}; heavy = [m for m in ('transformers', 'peft') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_top_level_is_lazy_and_keeps_its_public_names():
    code = ("import sys, dynlora; assert 'torch' not in sys.modules; "
            "from dynlora import AdapterConfig, Controller, DynloraCallback, DynloraError, LoraLayer, Resize, "
            "adapters, export_peft, inject, load_peft, merge, remap_optimizer_state, remove, unmerge; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ok"


# Python >= 3.12 splits f-strings into parts; their text is FSTRING_MIDDLE
TEXT_TOKENS = {tokenize.STRING, tokenize.COMMENT, tokenize.NAME, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def _method_words() -> re.Pattern:
    from dynlora.methods import registry

    names = set()
    for spec in registry.specs():
        if spec.name != "lora":  # "LoRA" is the subject of the whole library, not only that method's name
            names |= {spec.name, spec.name.replace("-", "_")}
    return re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, names))) + r")(?![\w-])", re.IGNORECASE)


def test_shared_code_never_names_a_method():
    """Outside ``dynlora/methods`` no code, string, comment or docstring names a registered method."""
    from dynlora.methods import registry

    words = _method_words()
    names = set(registry.names())
    found = []
    for path in ROOT.rglob("*.py"):
        if "methods" in path.relative_to(ROOT).parts:
            continue
        source = path.read_text()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            text = tok.string
            if tok.type == tokenize.STRING:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):  # f-strings: look at their text
                    value = text
                if isinstance(value, str) and (value in names or value.split(":")[0] in names):
                    found.append(f"{path.name}:{tok.start[0]} {text}")
            if tok.type in TEXT_TOKENS and words.search(text):
                found.append(f"{path.name}:{tok.start[0]} {text[:60]}")
    assert found == []
