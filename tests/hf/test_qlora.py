"""The QLoRA recipe through the library path: a 4-bit nf4 base, PEFT's ``prepare_model_for_kbit_training``,
``dynlora.get_dynamic_model`` and TRL's ``SFTTrainer`` with ``DynloraCallback()``, in bf16 with gradient
checkpointing and accumulation 2 (bitsandbytes' CPU path). docs/precision.md shows ``SCRIPT`` (tests/test_docs.py checks it is this one)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from dynlora.hf.callback import DynloraCallback
from transformers import TrainerCallback

pytest.importorskip("trl")
pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = textwrap.dedent('''
    import torch
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    import dynlora

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=nf4, device_map=DEVICE)
    model = prepare_model_for_kbit_training(model)
    model = dynlora.get_dynamic_model(model, dynlora.L1RALoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                    lam=3.0, lr_c=0.1, interval=4))
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i} plus one?"}],
                               "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(64)])
    args = SFTConfig(output_dir=OUT, max_steps=8, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     bf16=True, gradient_checkpointing=True, learning_rate=1e-2, save_steps=4, max_length=64,
                     report_to="none", seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[dynlora.DynloraCallback()])
    trainer.train(resume_from_checkpoint=RESUME)
    dynlora.export_peft(model, f"{OUT}/adapter")
''')


class _StopAt(TrainerCallback):
    """Stops the Trainer after optimizer step ``step`` (a run killed between two checkpoints)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def _run(model: Path, out: Path, resume: bool = False, stop_at: int | None = None) -> dict:
    """``SCRIPT`` as a user runs it (here on the CPU, without progress bars); the scope it leaves."""
    scope = {"MODEL": str(model), "OUT": str(out), "RESUME": True if resume else None, "DEVICE": "cpu"}
    script = SCRIPT.replace('report_to="none", seed=0)', 'report_to="none", seed=0, use_cpu=True, disable_tqdm=True)')
    if stop_at is not None:  # stopped after step `stop_at`, before the export
        scope["STOP"] = _StopAt(stop_at)
        script = script.replace("callbacks=[dynlora.DynloraCallback()]", "callbacks=[dynlora.DynloraCallback(), STOP]")
        script = script.replace('dynlora.export_peft(model, f"{OUT}/adapter")', "")
    exec(compile(script, "qlora.py", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A tiny random Llama of hidden size 64 (bitsandbytes quantizes in blocks of 64 values)."""
    from tests.conftest import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("small-llama"), hidden=64)


def test_the_qlora_recipe_moves_ranks_resumes_to_the_straight_run_and_exports_for_plain_peft(small_llama, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    straight = _run(small_llama, tmp_path / "straight")
    model, trainer = straight["model"], straight["trainer"]
    controller = next(c.controller for c in trainer.callback_handler.callbacks if isinstance(c, DynloraCallback))
    assert trainer.state.global_step == 8 and model.is_loaded_in_4bit and model.is_gradient_checkpointing
    assert sum(e.detail["moved"] for e in controller.history if e.event == "realloc") > 0  # ranks moved
    assert sum(controller.ranks().values()) == 4 * len(controller.layers)  # under the same budget

    _run(small_llama, tmp_path / "resumed", stop_at=6)  # a checkpoint at 4, stopped at 6
    resumed = _run(small_llama, tmp_path / "resumed", resume=True)  # from checkpoint-4
    ours, theirs = (load_file(str(run / "adapter" / "adapter_model.safetensors"))
                    for run in (tmp_path / "resumed", tmp_path / "straight"))
    assert ours.keys() == theirs.keys()
    for key in theirs:  # the same computation from the same state: bit for bit
        assert torch.equal(ours[key], theirs[key]), key
    assert next(c.controller for c in resumed["trainer"].callback_handler.callbacks
                if isinstance(c, DynloraCallback)).ranks() == controller.ranks()

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(small_llama, quantization_config=nf4, device_map="cpu")
    plain = PeftModel.from_pretrained(base, str(tmp_path / "straight" / "adapter")).eval()
    ids = straight["tokenizer"](["what is 3 plus one?"], return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**ids).logits
        got = plain(**ids).logits
    # Two different computations in bf16 (the 4-bit base computes in it, TRL keeps QLoRA adapters in it): PEFT
    # adds x A^T B^T * scale, dynlora ((x A^T) * gate) B^T * scale (the gate folded into B on export), each
    # rounding to bf16 (relative step 2^-8) at other points. The float32 head sees hidden states that differ
    # by about one bf16 step; the largest logit is about 0.7 and they differed by 0.0033 (2026-12-04). The
    # bound, 4 bf16 steps of the largest logit, leaves room for another CPU's kernels.
    bound = 4 * 2.0 ** -8 * float(expected.abs().max())
    assert float((got.float() - expected.float()).abs().max()) <= bound
