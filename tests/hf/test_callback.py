"""``DynloraCallback`` under a plain ``transformers.Trainer`` that builds its own optimizer: L1RA's gates
still train at ``lr_c`` (the Trainer's groups have no gate group), so ranks move and the budget holds."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, inject
from dynlora.hf.callback import DynloraCallback
from dynlora.methods.l1ra import L1RA, L1RAConfig
from tests.conftest import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 100, (n, 10), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(n)]


def test_l1ra_moves_ranks_with_the_trainers_own_optimizer(tmp_path):
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True), generator=torch.Generator().manual_seed(0))
    budget = sum(layer.rank for layer in Controller(model).layers.values())
    # a main lr 500 times below lr_c: in the Trainer's group the gates would never reach the threshold
    controller = Controller(model, L1RA(L1RAConfig(lam=1.5, lr_c=0.05, interval=6), total_steps=20))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
                             learning_rate=1e-4, lr_scheduler_type="constant", save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, logging_steps=50)
    Trainer(model=model, args=args, train_dataset=_data(), callbacks=[DynloraCallback(controller)]).train()
    reallocs = [e for e in controller.history if e.event == "realloc"]
    assert reallocs and sum(e.detail["moved"] for e in reallocs) > 0, [e.detail for e in reallocs]
    assert sum(controller.ranks().values()) == budget


def _peft_shaped_run(tmp_path, max_steps: int, resume: bool | str = False, trainer_class: type = Trainer):
    import dynlora

    model = dynlora.get_dynamic_model(tiny_bert(), dynlora.L1RALoraConfig(r=4, lora_alpha=8, lam=1.5, lr_c=0.05,
                                                                         interval=6))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
                             learning_rate=1e-4, save_strategy="steps", save_steps=6, report_to="none",
                             use_cpu=True, disable_tqdm=True, logging_steps=50, seed=0, data_seed=0)
    callback = dynlora.DynloraCallback()
    trainer = trainer_class(model=model, args=args, train_dataset=_data(), callbacks=[callback])
    if max_steps < 20:  # stop early, as a killed run would: the last checkpoint stays
        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = state.global_step >= max_steps
        trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=resume or None)
    return model, callback.controller


def test_peft_shaped_entry_point_moves_ranks_and_resumes_bit_exact(tmp_path):
    straight, controller = _peft_shaped_run(tmp_path / "straight", 20)
    assert any(e.detail["moved"] for e in controller.history if e.event == "realloc")
    _peft_shaped_run(tmp_path / "resumed", 13)  # checkpoints at 6 and 12, then stopped
    resumed, again = _peft_shaped_run(tmp_path / "resumed", 20, resume=True)
    assert again.ranks() == controller.ranks()
    ours, theirs = resumed.state_dict(), straight.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)


def test_a_dynlora_trainer_resumes_the_controller_from_the_checkpoint_it_is_given(tmp_path):
    """Under ``DynloraTrainer`` the controller comes back from the checkpoint the Trainer resumes from,
    wherever it lies (a copy outside ``output_dir``), before its weights load; the checkpoint's dynlora
    part (controller state, record, marker) is written by the Trainer, the marker last, listing the rest."""
    import json
    import shutil

    from dynlora.hf.trainer import DynloraTrainer
    from dynlora.io.checkpoint import COMPLETE_MARKER, CONTROLLER_FILE

    straight, controller = _peft_shaped_run(tmp_path / "straight", 20, trainer_class=DynloraTrainer)
    _peft_shaped_run(tmp_path / "first", 13, trainer_class=DynloraTrainer)
    saved = tmp_path / "first" / "checkpoint-12"
    listed = json.loads((saved / COMPLETE_MARKER).read_text())["files"]
    assert CONTROLLER_FILE in listed and "dynlora-record-0.json" in listed, sorted(listed)
    copy = shutil.copytree(saved, tmp_path / "moved" / "kept")  # no longer output_dir/checkpoint-12
    resumed, again = _peft_shaped_run(tmp_path / "second", 20, resume=str(copy), trainer_class=DynloraTrainer)
    assert [e.row() for e in again.history if e.event != "log"] == [
        e.row() for e in controller.history if e.event != "log"]
    ours, theirs = resumed.state_dict(), straight.state_dict()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)


def test_rank_events_reach_the_trainers_loggers_as_scalars(tmp_path):
    import dynlora
    from dynlora.hf.trainer import DynloraTrainerMixin

    class Recorder(TrainerCallback):  # what TensorBoard / W&B callbacks receive
        def __init__(self):
            self.lines = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.lines.append((state.global_step, dict(logs or {})))

    class MyTrainer(DynloraTrainerMixin, Trainer):
        pass

    model = dynlora.get_dynamic_model(tiny_bert(), dynlora.L1RALoraConfig(r=4, lora_alpha=8, lam=1.5, lr_c=0.05,
                                                                         interval=6))
    recorder, callback = Recorder(), dynlora.DynloraCallback()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
                             learning_rate=1e-4, save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, logging_steps=50)
    MyTrainer(model=model, args=args, train_dataset=_data(), callbacks=[callback, recorder]).train()
    events = [e.step for e in callback.controller.history if e.event == "realloc"]
    logged = {step: logs for step, logs in recorder.lines if "dynlora/total_rank" in logs}
    assert sorted(logged) == events == [6, 12, 18]  # a log line at each event, with logging_steps 50
    budget = 4 * len(callback.controller.layers)
    for logs in logged.values():
        assert logs["dynlora/total_rank"] == budget and logs["dynlora/ranks_grown"] == logs["dynlora/ranks_pruned"]
        shares = [v for k, v in logs.items() if k.startswith("dynlora/rank_share/")]
        assert len(shares) >= 4 and abs(sum(shares) - 1) < 1e-9
    assert sum(logs["dynlora/ranks_grown"] for logs in logged.values()) > 0
