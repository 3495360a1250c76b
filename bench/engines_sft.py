"""The two-line SFT script as a TRL user launches it under an accelerate config (``bench/gpu_engines.sh``):

    accelerate launch --config_file CONFIG bench/engines_sft.py MODEL OUT METHOD [CAPACITY]

A dynlora method on every linear layer of MODEL (r 4), with ``DynloraTrainerMixin`` (a rank change rebuilds
DDP) and, given CAPACITY, that many rank slots per adapter (shapes that never change). Prints, per process,
the engine accelerate chose, the adapters' parameter type and shape, the ranks and every event, so a log
shows what ran and where it broke."""

from __future__ import annotations

import os
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import dynlora

MODEL, OUT, METHOD = sys.argv[1], sys.argv[2], sys.argv[3]
CAPACITY = int(sys.argv[4]) if len(sys.argv) > 4 else None
KNOBS = {"l1ra": {"lam": 3.0, "lr_c": 0.1, "interval": 4}, "adaptive": {"interval": 4, "warmup": 0.0},
         "module-alloc:multinomial": {"schedule": "every:4"}}


class Trainer(dynlora.DynloraTrainerMixin, SFTTrainer):
    pass


tokenizer = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL)
model = dynlora.get_dynamic_model(model, dynlora.DynamicLoraConfig(
    method=METHOD, r=4, lora_alpha=8, target_modules="all-linear", capacity=CAPACITY, method_config=KNOBS[METHOD]))
data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i} plus one?"}],
                           "completion": [{"role": "assistant", "content": f"{i + 1}"}]} for i in range(64)])
args = SFTConfig(output_dir=OUT, max_steps=12, per_device_train_batch_size=4, learning_rate=1e-2,
                 lr_scheduler_type="constant", report_to="none", save_strategy="no", logging_steps=1, max_length=64,
                 disable_tqdm=True, seed=0, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available())
callback = dynlora.DynloraCallback()
trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[callback])
trainer.train()
rank = int(os.environ.get("RANK", "0"))
controller = callback.controller
param = next(p for n, p in trainer.model.named_parameters() if "lora_A" in n)
print(f"process {rank}: engine {trainer.accelerator.distributed_type}, model {type(trainer.model_wrapped).__name__}, "
      f"lora_A {type(param).__name__} {tuple(param.shape)}, ranks {sorted(set(controller.ranks().values()))}, "
      f"total {sum(controller.ranks().values())}, events "
      f"{[(e.step, e.event, e.replicas_agree) for e in controller.history if e.event not in ('log',)]}", flush=True)
