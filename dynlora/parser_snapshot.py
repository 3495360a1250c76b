"""A command's flags without importing what defines them: an argparse parser's arguments as JSON, kept in a cache.

``dynlora train``'s flags come from ``transformers.TrainingArguments`` and every registered method, so
building its parser imports torch, transformers and peft (seconds). ``--help`` and a bad flag need none of
that: ``snapshot`` writes the parser's groups and arguments down once, ``restore`` lays them out again
on a plain parser, which prints the same help and rejects the same mistakes with the same message.

A restored parser only ever *refuses*: what it accepts is parsed again by the real one, which holds the
real types. So a type it cannot rebuild (anything but ``int``, ``float``, ``str``) takes any string, and
choices whose values are not strings are shown (as the metavar) but left to the real parser to check.
``save`` keeps a snapshot only after a parser restored from it prints exactly the real help.

The cache is keyed by the Python and dependency versions and by dynlora's own sources, so an upgrade
or an edit makes a new one; it lives in ``$DYNLORA_CACHE`` (default ``~/.cache/dynlora``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from dynlora.cache import cache_root

FORMAT = 1
DEPENDENCIES = ("torch", "transformers", "peft", "accelerate", "trl", "bitsandbytes")
_PACKAGE = Path(__file__).resolve().parent
_ACTIONS = {cls.__name__: cls for cls in (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
                                          argparse._StoreConstAction, argparse._AppendAction, argparse._CountAction)}
_TYPES = {"int": int, "float": float, "str": str}


class Unsupported(Exception):
    """The parser holds something a snapshot cannot rebuild exactly."""


def _plain(value: Any) -> Any:
    """``value`` as JSON keeps it, or its ``str`` (what help prints of it)."""
    try:
        return value if json.loads(json.dumps(value)) == value else str(value)
    except (TypeError, ValueError):
        return str(value)


def _action(action: argparse.Action, group: int) -> dict[str, Any]:
    kind = type(action).__name__
    if kind not in _ACTIONS:
        raise Unsupported(f"action {kind} of {action.dest}")
    type_name = getattr(action.type, "__name__", None) if action.type is not None else None
    choices = list(action.choices) if action.choices is not None else None
    metavar = action.metavar
    if choices is not None and not (action.type in (None, str) and all(isinstance(c, str) for c in choices)):
        # the real type turns a string into a non-string choice: show the choices, let the real parser check
        if metavar is None:
            metavar = "{" + ",".join(map(str, choices)) + "}"
        choices = None
    return {"kind": kind, "group": group, "option_strings": list(action.option_strings), "dest": action.dest,
            "nargs": action.nargs, "const": _plain(action.const), "default": _plain(action.default),
            "type": type_name if type_name in _TYPES else None, "choices": choices, "required": action.required,
            "help": action.help, "metavar": list(metavar) if isinstance(metavar, tuple) else metavar}


def snapshot(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The argument groups and arguments of ``parser`` (its own help flag aside) as JSON-ready data."""
    if parser._mutually_exclusive_groups:
        raise Unsupported("mutually exclusive groups")
    groups = parser._action_groups
    where = {id(a): i for i, g in enumerate(groups) for a in g._group_actions}
    actions = [_action(a, where[id(a)]) for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    return {"format": FORMAT, "groups": [[g.title, g.description] for g in groups], "actions": actions}


def restore(data: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """Lay ``snapshot``'s arguments out on ``parser`` (a fresh one, made with the same settings)."""
    defaults = len(parser._action_groups)  # positionals and options: argparse files arguments there itself
    groups = [None] * defaults + [parser.add_argument_group(title, description)
                                  for title, description in data["groups"][defaults:]]
    for a in data["actions"]:
        target = groups[a["group"]] or parser
        kwargs: dict[str, Any] = {"action": _ACTIONS[a["kind"]], "default": a["default"], "help": a["help"]}
        if a["kind"] in ("_StoreAction", "_AppendAction"):
            kwargs.update(nargs=a["nargs"], const=a["const"], type=_TYPES.get(a["type"]), choices=a["choices"])
        if a["kind"] == "_StoreConstAction":
            kwargs["const"] = a["const"]
        if a["kind"] in ("_StoreAction", "_AppendAction", "_StoreConstAction") and a["metavar"] is not None:
            kwargs["metavar"] = tuple(a["metavar"]) if isinstance(a["metavar"], list) else a["metavar"]
        if a["option_strings"]:
            target.add_argument(*a["option_strings"], dest=a["dest"], required=a["required"], **kwargs)
        else:
            target.add_argument(a["dest"], **kwargs)


def cache_dir() -> Path:
    return cache_root() / "parsers"


@functools.cache
def fingerprint() -> str:
    """What a command's flags depend on: Python, the dependencies' versions, dynlora's sources (read once a
    process)."""
    digest = hashlib.sha256(f"{FORMAT} {sys.version}".encode())
    for name in DEPENDENCIES:
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=-".encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def load(command: str, key: str) -> dict[str, Any] | None:
    """The cached snapshot of ``command``'s parser for ``key``, if there is a readable one."""
    try:
        data = json.loads((cache_dir() / f"{command}-{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def save(command: str, key: str, parser: argparse.ArgumentParser, fresh: argparse.ArgumentParser) -> bool:
    """Cache ``parser``'s snapshot if ``fresh`` (an empty parser made like it) prints the same help once restored
    from it; a cache that cannot be written is no error (the next call builds the parser again)."""
    try:
        data = snapshot(parser)
        restore(json.loads(json.dumps(data)), fresh)
    except (Unsupported, TypeError, ValueError):
        return False
    if fresh.format_help() != parser.format_help() or fresh.format_usage() != parser.format_usage():
        return False
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{command}-", delete=False) as tmp:
            json.dump(data, tmp)
        os.replace(tmp.name, folder / f"{command}-{key}.json")
    except OSError:
        return False
    return True
