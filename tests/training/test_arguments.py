"""``dynlora train``'s arguments: HfArgumentParser over dynlora's dataclasses and all of TrainingArguments,
old flags as aliases, YAML / JSON config files, and ``config.yaml`` reproducing a run bit for bit."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dynlora.cli import _values, build_parser, main
from dynlora.methods.l1ra import L1RAConfig
from dynlora.training.arguments import config_of, config_yaml, options_from
from dynlora.training.fit import training_args
from dynlora.training.options import TrainOptions


def _options(*argv: str) -> TrainOptions:
    return options_from(vars(_values(build_parser(), ["train", *argv])))


def test_no_flags_give_the_default_options():
    assert _options() == TrainOptions()
    assert TrainOptions().trainer == {}


def test_old_flags_are_aliases_of_the_trainer_and_peft_names():
    old = _options("--lr", "0.002", "--batch-size", "4", "--epochs", "2", "--grad-accum", "2", "--output", "x",
                   "--warmup-ratio", "0.1", "--load-in-4bit", "--gradient-checkpointing", "--method", "l1ra",
                   "--min-rank", "2", "--l1ra-lambda", "0.3", "--rank", "4", "--train-size", "0")
    new = _options("--learning_rate", "0.002", "--per_device_train_batch_size", "4", "--num_train_epochs", "2",
                   "--gradient_accumulation_steps", "2", "--output_dir", "x", "--warmup_steps", "0.1",
                   "--load_in_4bit", "--activation_checkpointing", "--method", "l1ra", "--min_rank", "2",
                   "--l1ra_lambda", "0.3", "--lora_r", "4", "--train_size", "0")
    assert old == new
    assert (old.lr, old.batch_size, old.epochs, old.grad_accum, old.output, old.warmup) == (0.002, 4, 2, 2, "x", 0.1)
    assert old.quantize == "4bit" and old.gradient_checkpointing and old.train_size is None and old.rank == 4
    assert old.method_config == L1RAConfig(lam=0.3, min_rank=2) and old.trainer == {}


def test_every_trainer_flag_reaches_the_trainer(tmp_path):
    opts = _options("--report_to", "tensorboard", "--lr_scheduler_type", "cosine", "--weight_decay", "0.01",
                    "--logging_steps", "3", "--max_grad_norm", "0.5", "--save_strategy", "no", "--adam_beta2", "0.99")
    assert opts.weight_decay == 0.01  # a TrainOptions field under its TrainingArguments name
    assert opts.trainer == {"report_to": "tensorboard", "lr_scheduler_type": "cosine", "logging_steps": 3.0,
                            "max_grad_norm": 0.5, "save_strategy": "no", "adam_beta2": 0.99}
    args = training_args(opts, tmp_path, total_steps=40, tokens_across_devices=False)
    assert args.report_to == ["tensorboard"] and args.lr_scheduler_type == "cosine" and args.logging_steps == 3
    assert args.weight_decay == 0.01 and args.max_grad_norm == 0.5 and args.save_strategy == "no"
    assert args.adam_beta2 == 0.99 and args.learning_rate == 1e-3


def test_without_trainer_flags_the_trainer_gets_dynlora_s_values(tmp_path):
    args = training_args(TrainOptions(), tmp_path, total_steps=188, tokens_across_devices=False)
    assert (args.learning_rate, args.per_device_train_batch_size, args.warmup_steps) == (1e-3, 16, 0.06)
    assert (args.logging_steps, args.save_steps, args.save_total_limit) == (9, 18, 2)  # 188 // 20, 0.1 x 188
    assert args.optim == "adamw_torch" and args.report_to == [] and not args.activation_checkpointing


@pytest.mark.parametrize("opts", [
    TrainOptions(),
    TrainOptions(method="l1ra", method_config=L1RAConfig(lam=0.25, max_rank=12), targets=("query", "value"),
                 train_size=None, lr=3e-4, warmup=5, output="runs/x", quantize="8bit", dtype="bfloat16"),
    TrainOptions(method="module-alloc:topp", max_steps=30, seed=7, gradient_checkpointing=True, save_every=0,
                 trainer={"report_to": "tensorboard", "lr_scheduler_type": "cosine", "logging_steps": 2}),
    TrainOptions(method="adaptive", targets=r".*\.(query|key)$", rank_budget=40, device="cpu", bf16=True),
])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_reads_back_into_the_same_options(opts, suffix, tmp_path):
    path = tmp_path / f"run{suffix}"
    path.write_text(config_yaml(opts) if suffix == ".yaml" else json.dumps(config_of(opts)))
    assert _options(str(path)) == opts


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nrank: 4\nmethod: l1ra\nl1ra_lambda: 0.2\nreport_to: tensorboard\n")
    opts = _options(str(path), "--rank", "6", "--learning_rate", "5e-4")
    assert (opts.rank, opts.lr, opts.method_config.lam, opts.trainer) == (6, 5e-4, 0.2, {"report_to": "tensorboard"})


@pytest.mark.parametrize("text,suffix,needles", [
    ("learning_rat: 0.1\n", ".yaml", ["'learning_rat'", "closest: learning_rate"]),
    ("rnak: 4\n", ".yaml", ["'rnak'", "rank"]),
    ('{"report_too": "tensorboard"}', ".json", ["'report_too'", "report_to"]),
    ("- rank\n- 4\n", ".yaml", ["mapping", "list"]),
    ("rank: [4\n", ".yaml", ["not valid YAML"]),
    ("rank: eight\n", ".yaml", ["--rank", "'eight'"]),
])
def test_a_bad_config_file_is_one_line_and_exit_2(text, suffix, needles, tmp_path, capsys):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    assert _exit_code(["train", str(path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dynlora: error:"), err
    assert all(n in err for n in needles), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def _exit_code(argv: list[str]) -> int:
    """``main``'s return code, or argparse's exit code for a value its type rejects."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_config_yaml_trains_the_run_again_bit_for_bit_and_tensorboard_gets_the_rank_scalars(tiny_assets, tmp_path,
                                                                                             capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, data = tiny_assets
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": model, "dataset": data, "method": "l1ra", "l1ra_lambda": 6.0, "l1ra_lr": 0.05, "l1ra_interval": 2,
        "max_steps": 8, "per_device_train_batch_size": 8, "max_length": 8, "seed": 3, "report_to": "tensorboard",
        "logging_steps": 1, "output_dir": str(tmp_path / "first")}))
    assert main(["train", str(path)]) == 0
    first = tmp_path / "first"
    assert main(["train", str(first / "config.yaml"), "--output_dir", str(tmp_path / "second")]) == 0
    a = load_file(str(first / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "second" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["l1ra_lambda"] == 6.0 and saved["report_to"] == "tensorboard" and saved["learning_rate"] == 1e-3

    events = EventAccumulator(str(next((first / "runs").iterdir())))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/dynlora/total_rank", "train/dynlora/ranks_pruned", "train/dynlora/ranks_grown",
            "train/dynlora/active_adapters", "train/loss"} <= tags, tags
    assert any(t.startswith("train/dynlora/rank_share/") for t in tags), tags
    total = [e.value for e in events.Scalars("train/dynlora/total_rank")]
    assert total and len(set(total)) == 1  # L1RA moves ranks, the budget holds
    assert sum(e.value for e in events.Scalars("train/dynlora/ranks_pruned")) > 0

    out = capsys.readouterr()
    # quiet: dependencies' warnings went to the run log; dynlora's own (texts truncated to 8 tokens) once each
    assert "Warning" not in out.err, out.err
    assert out.out.count("dynlora: warning: truncated") == 4  # train and test split, two runs
    assert "UserWarning: truncated" in (first / "train.log").read_text()


def test_the_run_log_keeps_dependencies_warnings_off_the_terminal(tmp_path, capsys):
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from dynlora.training.run_log import run_log

    root = logging.getLogger("transformers")
    before = (set(root.handlers), root.propagate, warnings.showwarning)
    with run_log(tmp_path / "train.log"):
        warnings.warn("a dependency's deprecation", UserWarning, stacklevel=1)
        hf_logging.get_logger("transformers.trainer").warning("a transformers warning")
    hf_logging.get_logger("transformers.trainer").warning("after the run")
    out = capsys.readouterr()
    log = (tmp_path / "train.log").read_text()
    assert "a dependency's deprecation" in log and "a transformers warning" in log and "after the run" not in log
    assert "deprecation" not in out.err + out.out and "a transformers warning" not in out.err + out.out
    assert (set(root.handlers), root.propagate, warnings.showwarning) == before  # transformers' own handler is back
