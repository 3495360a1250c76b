"""Inside the Trainer's own optimizer too, a rank grown mid-run takes a fresh Adam's first step (about lr),
not the several-lr jolt of a zero second moment under the tensor's old bias correction."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

import dynlora
from tests.conftest import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FirstSteps(TrainerCallback):
    """|dB| / lr of every B column that was exactly 0 (a fresh rank) before the optimizer step."""

    def __init__(self, model) -> None:
        self.layers = dynlora.adapters(model)
        self.before: dict[str, torch.Tensor] = {}
        self.ratios: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # after the controller's resizes
        self.before = {n: layer.lora_B.detach().clone() for n, layer in self.layers.items()}

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # before the controller steps
        lr = optimizer.param_groups[0]["lr"]
        for name, layer in self.layers.items():
            old = self.before.get(name)
            if old is None or old.shape != layer.lora_B.shape:
                continue
            fresh = (old == 0).all(0)  # (r,) columns never trained
            if fresh.any() and not fresh.all():
                self.ratios.append(float((layer.lora_B.detach() - old)[:, fresh].abs().mean()) / lr)


def test_a_grown_rank_takes_a_fresh_adams_first_step_in_the_trainers_optimizer(tmp_path):
    config = dynlora.AdaptiveLoraConfig(r=4, lora_alpha=8, interval=4, warmup=12, max_moves=0.5, input_gate=False)
    model = dynlora.get_dynamic_model(tiny_bert(), config)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 100, (96, 10), generator=g)
    data = [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(96)]
    # beta1 0.5, beta2 0.99: under the tensor's count at step 16 a fresh column's first step would be 1.9 lr
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=24, per_device_train_batch_size=4,
                             learning_rate=1e-3, lr_scheduler_type="constant", adam_beta1=0.5, adam_beta2=0.99,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    watch = FirstSteps(model)
    callback = dynlora.DynloraCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[watch, callback])
    trainer.train()
    assert callback.controller.fresh.births, "no rank grew: nothing measured"
    assert watch.ratios and max(watch.ratios) <= 1.02, watch.ratios
