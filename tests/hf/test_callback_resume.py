"""``DynloraCallback()`` resumes a run under a parameter or FLOP budget bit for bit: the Trainer loads the
checkpoint's (moved) ranks into the layers before the controller is built, and the controller must take the
run's budget from its configuration, not trim those ranks to a budget recounted from them."""

import shutil

import pytest
import torch
from transformers import Trainer, TrainingArguments

import dynlora
from tests.conftest import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# settings that move ranks before the checkpoint at step 3
CONFIGS = {
    "l1ra": lambda unit: dynlora.L1RALoraConfig(r=4, lora_alpha=8, lam=1.5, lr_c=0.5, interval=1,
                                                budget_unit=unit),
    "adaptive": lambda unit: dynlora.AdaptiveLoraConfig(r=4, lora_alpha=8, interval=1, warmup=1, max_moves=0.5,
                                                        budget_unit=unit),
}


def _data(n: int = 48) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 100, (n, 10), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(n)]


def _run(folder, method: str, unit: str, resume: bool = False):
    model = dynlora.get_dynamic_model(tiny_bert(), CONFIGS[method](unit))
    args = TrainingArguments(output_dir=str(folder), max_steps=6, per_device_train_batch_size=8,
                             learning_rate=5e-3, save_strategy="steps", save_steps=3, report_to="none",
                             use_cpu=True, disable_tqdm=True, logging_steps=50, seed=0, data_seed=0)
    callback = dynlora.DynloraCallback()
    Trainer(model=model, args=args, train_dataset=_data(), callbacks=[callback]).train(
        resume_from_checkpoint=True if resume else None)
    return model, callback.controller


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("unit", ["params", "flops"])
def test_resume_under_a_param_or_flop_budget_equals_the_straight_run(tmp_path, method, unit):
    straight, controller = _run(tmp_path / "straight", method, unit)
    saved = [e for e in controller.history if e.ranks is not None and e.step <= 3]
    assert saved[-1].ranks != saved[0].ranks, "no rank moved before the checkpoint: nothing to resume"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed, again = _run(tmp_path / "resumed", method, unit, resume=True)
    assert again.budget == controller.budget
    assert again.ranks() == controller.ranks()
    ours, theirs = resumed.state_dict(), straight.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:  # the same computation on one thread: bit for bit
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
