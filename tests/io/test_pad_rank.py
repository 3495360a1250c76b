"""``--pad-rank``: one rank for every module, the same logits as the unequal-rank export in plain PEFT."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from dynlora.core.inject import AdapterConfig, inject
from dynlora.errors import DynloraError
from dynlora.io.export import export_peft
from dynlora.io.pad_rank import pad_adapter
from tests.conftest import tiny_bert, tokens
from tests.tolerance import assert_within_rounding, chain_terms
from tests.io.test_export import _train_like


def test_padded_adapter_has_one_rank_and_the_same_logits(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "base")
    load = lambda: AutoModelForSequenceClassification.from_pretrained(tmp_path / "base").eval()  # noqa: E731
    model = load()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True))
    _train_like(model)  # unequal ranks, one pruned to 0, a moved head
    batch = tokens()
    with torch.no_grad():
        ours = model(**batch).logits
    export_peft(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    widest = max([config["r"], *config["rank_pattern"].values()])
    assert len({config["r"], *config["rank_pattern"].values()}) > 1
    pad_adapter(tmp_path / "adapter", tmp_path / "padded", widest + 2)
    padded = json.loads((tmp_path / "padded" / "adapter_config.json").read_text())
    assert (padded["r"], padded["lora_alpha"], padded["rank_pattern"], padded["alpha_pattern"]) == \
        (widest + 2, widest + 2, {}, {})
    weights = load_file(str(tmp_path / "padded" / "adapter_model.safetensors"))
    assert {t.shape[0] for k, t in weights.items() if "lora_A" in k} == {widest + 2}
    assert {t.shape[1] for k, t in weights.items() if "lora_B" in k} == {widest + 2}
    plain = PeftModel.from_pretrained(load(), str(tmp_path / "padded")).eval()
    with torch.no_grad():  # PEFT's forward against dynlora's; each B rounded once more (gate and scale folded in)
        assert_within_rounding(plain(**batch).logits, ours, chain_terms(layers=2, hidden=32, intermediate=64, seq=8) + 2)


def test_pad_rank_below_the_largest_rank_is_refused_and_writes_nothing(tmp_path):
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8))
    export_peft(model, tmp_path / "adapter")
    with pytest.raises(DynloraError, match="pad rank 3 is below the adapter's largest rank 4; give --pad-rank >= 4"):
        pad_adapter(tmp_path / "adapter", tmp_path / "padded", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
