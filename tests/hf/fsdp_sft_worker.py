"""The two-line SFTTrainer script under accelerate's FSDP2 (``test_engines.py`` launches it with TRL's
``fsdp2.yaml``; ``fsdp_on_cpu`` supplies the FSDP state accelerate keeps for accelerators), or in one process.

Arguments: MODEL OUT METHOD [RESUME]. The adapters hold 16 rank slots. L1RA and adaptive train under TRL's own
``SFTTrainer`` with the two lines; module allocation under the mixin (whose FSDP checkpoints it tests). A checkpoint
at step 6; with RESUME, the run resumes from OUT's ``checkpoint-6``. Writes OUT/run.json (decisions, losses,
ranks, the replica checks), the adapters' final tensors (read whole) and the exported PEFT adapter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import dynlora
from dynlora.core.sharded import whole

sys.path.insert(0, str(Path(__file__).parent))
from fsdp_on_cpu import on_cpu  # noqa: E402

model_folder, out, method = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
processes = int(os.environ.get("WORLD_SIZE", "1"))  # the process group starts with the Trainer
resume = len(sys.argv) > 4
CONFIGS = {
    "l1ra": dynlora.DynamicLoraConfig(method="l1ra", r=4, lora_alpha=8, lora_dropout=0.0, capacity=16,
                                      method_config={"lam": 3.0, "lr_c": 0.1, "interval": 4}),
    "module-alloc": dynlora.DynamicLoraConfig(method="module-alloc:multinomial", r=4, lora_alpha=8, lora_dropout=0.0, capacity=16,
                                              method_config={"schedule": "every:4"}),
    "adaptive": dynlora.DynamicLoraConfig(method="adaptive", r=4, lora_alpha=8, lora_dropout=0.0, capacity=16,
                                          method_config={"interval": 4, "warmup": 0.0}),
}


class MixinTrainer(dynlora.DynloraTrainerMixin, SFTTrainer):
    """SFTTrainer with dynlora's mixin: it writes and reads the adapters' checkpoint itself."""


tokenizer = AutoTokenizer.from_pretrained(model_folder)
torch.manual_seed(0)  # the adapters' first values: the same in the one-process run
model = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(model_folder), CONFIGS[method])
data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i} plus one?"}],
                           "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(96)])
args = SFTConfig(output_dir=str(out / "work"), max_steps=12, per_device_train_batch_size=8 // processes,
                 learning_rate=1e-2, report_to="none", use_cpu=True, save_strategy="steps", save_steps=6,
                 logging_steps=1, max_length=64, disable_tqdm=True, seed=0, data_seed=0, bf16=False,
                 train_sampling_strategy="sequential")  # the same 8 examples per step in 1 or 2 processes
trainer_class = MixinTrainer if method == "module-alloc" else SFTTrainer
if processes > 1:
    trainer_class = on_cpu(trainer_class)
callback = dynlora.DynloraCallback()
trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[callback])
trainer.train(resume_from_checkpoint=str(out / "work" / "checkpoint-6") if resume else None)
controller = callback.controller
final = {k: whole(v).detach().contiguous() for k, v in trainer.model.state_dict().items() if "lora_" in k}
dynlora.export_peft(trainer.model, out / ("adapter-resumed" if resume else "adapter"))  # every process reads
if trainer.is_world_process_zero():
    save_file(final, str(out / ("final-resumed.safetensors" if resume else "final.safetensors")))
    decisions = [(e.step, e.event, e.ranks, e.active) for e in controller.history if e.event in ("realloc", "select")]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    (out / ("run-resumed.json" if resume else "run.json")).write_text(json.dumps({
        "decisions": decisions, "losses": losses, "ranks": controller.ranks(),
        "fsdp": trainer.is_fsdp_enabled, "parameters": type(next(
            p for n, p in trainer.model.named_parameters() if "lora_A" in n)).__name__,
        "replicas": [e.replicas_agree for e in controller.history if e.event in ("realloc", "select")]}))
