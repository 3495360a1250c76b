"""TRL's ``SFTTrainer`` with dynlora: the Trainer builds its own optimizer and L1RA's ranks still move; a
PEFT LoRA SFT script runs l1ra with two lines changed (plus the import)."""

from __future__ import annotations

import difflib
import textwrap

import pytest
import torch

from dynlora.hf.callback import DynloraCallback

from tests.tolerance import assert_within_rounding, chain_terms

pytest.importorskip("trl")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PEFT_SCRIPT = textwrap.dedent('''
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i} plus one?"}],
                               "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(64)])
    args = SFTConfig(output_dir=OUT, max_steps=20, per_device_train_batch_size=4, learning_rate=1e-4,
                     lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
                     logging_steps=50, max_length=64, disable_tqdm=True, seed=0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
''')

EDITS = {
    "from peft import LoraConfig, get_peft_model": "import dynlora",
    'model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))':
        'model = dynlora.get_dynamic_model(model, dynlora.L1RALoraConfig(r=4, lora_alpha=8, target_modules="all-linear", '
        "lam=1.5, lr_c=0.05, interval=6))",
    "trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)":
        "trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, "
        "callbacks=[dynlora.DynloraCallback()])",
}


def _dynlora_script() -> str:
    script = PEFT_SCRIPT
    for old, new in EDITS.items():
        assert script.count(old) == 1
        script = script.replace(old, new)
    return script


def test_a_peft_sft_script_runs_l1ra_with_two_lines_changed_and_ranks_move(tiny_lm, tmp_path):
    script = _dynlora_script()
    changed = [line for line in difflib.unified_diff(PEFT_SCRIPT.splitlines(), script.splitlines(), lineterm="", n=0)
               if line.startswith("+") and not line.startswith("+++")]
    assert len(changed) == 3 and changed[0] == "+import dynlora"  # the import, the wrap call, the callback
    scope = {"MODEL": str(tiny_lm), "OUT": str(tmp_path / "sft")}
    exec(compile(script, "sft_dynlora.py", "exec"), scope)
    trainer = scope["trainer"]
    controller = next(c.controller for c in trainer.callback_handler.callbacks if isinstance(c, DynloraCallback))
    # SFTTrainer built the optimizer (one main lr, 500 x below lr_c): the gates still trained at lr_c
    assert trainer.optimizer is not None and len({g["lr"] for g in trainer.optimizer.param_groups}) == 1
    reallocs = [e for e in controller.history if e.event == "realloc"]
    assert sum(e.detail["moved"] for e in reallocs) > 0, [e.detail for e in reallocs]
    budget = 4 * len(controller.layers)
    assert sum(controller.ranks().values()) == budget


def test_the_peft_script_itself_runs(tiny_lm, tmp_path):
    scope = {"MODEL": str(tiny_lm), "OUT": str(tmp_path / "sft")}
    exec(compile(PEFT_SCRIPT, "sft_peft.py", "exec"), scope)
    assert scope["trainer"].state.global_step == 20
    assert torch.isfinite(torch.tensor(scope["trainer"].state.log_history[-1]["train_loss"]))


METHODS = {  # settings that act within a 12-step run of the tiny model
    "lora": lambda dynlora: dynlora.StaticLoraConfig(r=4, lora_alpha=8),
    "l1ra": lambda dynlora: dynlora.L1RALoraConfig(r=4, lora_alpha=8, lam=3.0, lr_c=0.1, interval=4),
    "adaptive:no-gate": lambda dynlora: dynlora.DynamicLoraConfig(method="adaptive:no-gate", r=4, lora_alpha=8,
                                                                 method_config={"interval": 4, "warmup": 2}),
    "module-alloc": lambda dynlora: dynlora.ModuleAllocLoraConfig(r=4, lora_alpha=8, schedule="every:4"),
    "l1ra-alloc": lambda dynlora: dynlora.DynamicLoraConfig(method="l1ra-alloc", r=4, lora_alpha=8, method_config={
        "lam": 3.0, "lr_c": 0.1, "interval": 4, "schedule": "every:3"}),
}


def _sft(tiny_lm, out, method: str, stop_at: int | None = None, resume: bool = False):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    import dynlora

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(tiny_lm), METHODS[method](dynlora))
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i} plus one?"}],
                               "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(48)])
    args = SFTConfig(output_dir=str(out), max_steps=12, per_device_train_batch_size=4, learning_rate=1e-2,
                     report_to="none", use_cpu=True, save_strategy="steps", save_steps=4, logging_steps=50,
                     max_length=64, disable_tqdm=True, seed=0, data_seed=0,
                     bf16=False)  # TRL defaults to bf16, and accelerate then leaves model.forward under autocast
    callback = dynlora.DynloraCallback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[callback])
    if stop_at is not None:
        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = state.global_step >= stop_at
        trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=True if resume else None)
    return model, callback.controller, tokenizer


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sft_every_method_moves_resumes_bit_exact_and_exports_for_plain_peft(tiny_lm, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import dynlora

    model, controller, tokenizer = _sft(tiny_lm, tmp_path / "straight", method)
    budget = 4 * len(controller.layers)
    assert sum(controller.ranks().values()) == budget
    events = [e for e in controller.history if e.event in ("realloc", "select")]
    if method != "lora":
        assert events, "the method made no decision"
        assert any((e.detail.get("moved") if e.event == "realloc" else e.active is not None) for e in events)
    _sft(tiny_lm, tmp_path / "resumed", method, stop_at=9)  # checkpoints at 4 and 8, then stopped
    resumed, again, _ = _sft(tiny_lm, tmp_path / "resumed", method, resume=True)
    assert again.ranks() == controller.ranks() and again.active == controller.active
    ours, theirs = resumed.state_dict(), model.state_dict()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    dynlora.export_peft(model, tmp_path / "adapter", dtype="float32")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(tmp_path / "adapter"))
    ids = tokenizer(["what is 3 plus one?"], return_tensors="pt")
    with torch.no_grad():  # PEFT's forward against dynlora's, through tiny_lm (2 layers, hidden 32, feed-forward 64)
        assert_within_rounding(peft_model.eval()(**ids).logits, model.eval()(**ids).logits,
                               chain_terms(layers=2, hidden=32, intermediate=64, seq=ids["input_ids"].shape[1]) + 2)


@pytest.mark.slow  # two fresh processes cost about 25 s on CI's 2 cores; make test-slow runs it
@pytest.mark.parametrize("method", ["adaptive", "l1ra", "lora", "module-alloc"])
def test_two_process_sft_trains_through_resizes_with_replicas_in_step(tiny_lm, tmp_path, method):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = Path(__file__).with_name("sft_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tiny_lm), str(out), method], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    # both processes agreed at every event but a probe's start (step 0, before any process could disagree)
    checked = [r for d, r in zip(run["decisions"], run["replicas"]) if d[0] > 0]
    assert checked and checked == [2] * len(checked) if method != "lora" else not run["decisions"]
    first = {n: 4 for n in run["ranks"]}
    assert sum(run["ranks"].values()) == sum(first.values())  # the budget held
    if method in ("adaptive", "l1ra"):
        assert any(d[2] != first for d in run["decisions"])  # ranks moved: DDP was rebuilt around them
    elif method == "module-alloc":
        assert all(d[3] for d in run["decisions"] if d[0] > 0)  # a trained set chosen at every selection
    else:
        assert not run["decisions"]
    zero, one = load_file(str(out / "adapters-0.safetensors")), load_file(str(out / "adapters-1.safetensors"))
    assert zero.keys() == one.keys()
    for key in zero:
        torch.testing.assert_close(one[key], zero[key], atol=0, rtol=0, msg=key)  # DDP kept the replicas equal


def test_several_processes_without_the_mixin_is_a_clear_error(tiny_lm, monkeypatch):
    from transformers import AutoModelForCausalLM

    import dynlora
    from dynlora.errors import DynloraError

    monkeypatch.setattr("dynlora.hf.callback.world_size", lambda: 2)
    model = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(tiny_lm), dynlora.StaticLoraConfig(r=2))
    with pytest.raises(DynloraError, match="DynloraTrainerMixin"):
        dynlora.DynloraCallback().on_train_begin(None, None, None, model=model)


def test_several_processes_need_no_mixin_when_nothing_changes_shape(tiny_lm, monkeypatch, tmp_path):
    """Rank slots: resizes rewrite them in place and switches stop gradients by a mask, so the DDP wrapper built
    once stays right, for methods that switch adapters too."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    import dynlora
    from dynlora.errors import DynloraError

    monkeypatch.setattr("dynlora.hf.callback.world_size", lambda: 2)
    begin = (SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(max_steps=10, global_step=0), None)
    slotted = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                                        dynlora.L1RALoraConfig(r=2, capacity=4))
    callback = dynlora.DynloraCallback()
    callback.on_train_begin(*begin, model=slotted)
    assert callback.controller.layers and all(layer.capacity == 4 for layer in callback.controller.layers.values())
    switching = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                                          dynlora.ModuleAllocLoraConfig(r=2, capacity=4))
    callback = dynlora.DynloraCallback()
    callback.on_train_begin(*begin, model=switching)
    controller, before = callback.controller, [(id(p), p.requires_grad) for p in switching.parameters()]
    controller.switch(tuple(list(controller.layers)[:2]))
    assert [(id(p), p.requires_grad) for p in switching.parameters()] == before and controller.generation == 0
    unslotted = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                                          dynlora.ModuleAllocLoraConfig(r=2))
    with pytest.raises(DynloraError, match="rank slots"):
        dynlora.DynloraCallback().on_train_begin(*begin, model=unslotted)


def test_a_deepspeed_run_is_refused_in_one_line_before_training(tiny_lm, monkeypatch, tmp_path):
    """ZeRO keeps gradients and weights in its partitions: the scores would read nothing, so the run stops."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    import dynlora
    from dynlora.errors import DynloraError

    model = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(tiny_lm), dynlora.L1RALoraConfig(r=2))
    state = SimpleNamespace(max_steps=10, global_step=0)
    with pytest.raises(DynloraError, match="DeepSpeed ZeRO keeps"):
        dynlora.DynloraCallback().on_train_begin(SimpleNamespace(output_dir=str(tmp_path), deepspeed="z.json"),
                                                 state, None, model=model)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets for a zero*.yaml
    with pytest.raises(DynloraError, match="DeepSpeed ZeRO keeps"):
        dynlora.DynloraCallback().on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), state, None, model=model)
