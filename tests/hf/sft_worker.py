"""One SFTTrainer run with dynlora (run directly, or by torchrun in ``test_sft.py``): writes the controller's
decisions, the logged losses and the final adapter tensors to OUT (process 0). With a fourth argument, the
adapters hold that many rank slots and the Trainer is TRL's own, without dynlora's mixin."""

from __future__ import annotations

import dataclasses
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
from dynlora.core.distributed import world_size

model_folder, out, method = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
capacity = int(sys.argv[4]) if len(sys.argv) > 4 else None
CONFIGS = {
    "l1ra": dynlora.DynamicLoraConfig(method="l1ra", r=4, lora_alpha=8,
                                      method_config={"lam": 3.0, "lr_c": 0.1, "interval": 4}),
    "module-alloc": dynlora.DynamicLoraConfig(method="module-alloc:multinomial", r=4, lora_alpha=8,
                                              method_config={"schedule": "every:4"}),
    "adaptive": dynlora.DynamicLoraConfig(method="adaptive", r=4, lora_alpha=8,
                                          method_config={"interval": 4, "warmup": 0.0}),
    "lora": dynlora.DynamicLoraConfig(method="lora", r=4, lora_alpha=8),
}


class Trainer(dynlora.DynloraTrainerMixin, SFTTrainer):
    """SFTTrainer that rebuilds DDP after rank changes."""


tokenizer = AutoTokenizer.from_pretrained(model_folder)
config = CONFIGS[method] if capacity is None else dataclasses.replace(CONFIGS[method], capacity=capacity)
model = dynlora.get_dynamic_model(AutoModelForCausalLM.from_pretrained(model_folder), config)
data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i} plus one?"}],
                           "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(64)])
args = SFTConfig(output_dir=str(out / "work"), max_steps=12, per_device_train_batch_size=8 // int(os.environ.get("WORLD_SIZE", "1")),
                 learning_rate=1e-2, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
                 max_length=64, disable_tqdm=True, seed=0, data_seed=0, bf16=False)
callback = dynlora.DynloraCallback()
trainer = (Trainer if capacity is None else SFTTrainer)(model=model, args=args, train_dataset=data,
                                                        processing_class=tokenizer, callbacks=[callback])
trainer.train()
controller = callback.controller
out.mkdir(parents=True, exist_ok=True)
rank = torch.distributed.get_rank() if world_size() > 1 else 0
save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if "lora_" in k or "gate" in k},
          str(out / f"adapters-{rank}.safetensors"))
if trainer.is_world_process_zero():
    decisions = [(e.step, e.event, e.ranks, e.active) for e in controller.history if e.event in ("realloc", "select")]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    (out / "run.json").write_text(json.dumps({"decisions": decisions, "losses": losses, "ranks": controller.ranks(),
                                              "replicas": [e.replicas_agree for e in controller.history
                                                           if e.event in ("realloc", "select")]}))
