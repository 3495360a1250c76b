"""One run under FSDP2 (``fully_shard`` over a CPU mesh, gloo) or in one process (``test_fsdp2.py``): a tiny Llama
with dynlora adapters, the controller stepped after each optimizer step. Writes the losses, ranks and events
to OUT/run-<rank>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

import dynlora

model_folder, out, method, capacity = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_folder)
knobs = {"interval": 3, "warmup": 0.0} if method.startswith("adaptive") else {"lam": 30.0, "lr_c": 0.3, "interval": 3}
model = dynlora.get_dynamic_model(model, dynlora.DynamicLoraConfig(
    method=method, r=4, lora_alpha=8, capacity=int(capacity) if capacity != "none" else None, method_config=knobs))
if dist.get_world_size() > 1:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
controller = dynlora.attach(model, optimizer, total_steps=12)
ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))  # every process the same batch
losses, error = [], None
try:
    for _ in range(12):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
        losses.append(float(loss))
except dynlora.DynloraError as err:
    error = str(err)
out.mkdir(parents=True, exist_ok=True)
if error is None:  # the PEFT adapter's tensors: every process reads the sharded slots whole (a collective)
    from safetensors.torch import save_file

    from dynlora.io.export import export_state_dict

    save_file(export_state_dict(model, dtype="float32"), str(out / f"adapter-{dist.get_rank()}.safetensors"))
sharded = type(next(p for n, p in model.named_parameters() if "lora_A" in n)).__name__
(out / f"run-{dist.get_rank()}.json").write_text(json.dumps({
    "losses": losses, "ranks": controller.ranks(), "error": error, "parameters": sharded,
    "events": [(e.step, e.event, e.replicas_agree) for e in controller.history if e.event == "realloc"]}))
