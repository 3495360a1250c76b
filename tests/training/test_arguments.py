"""``dynlora train``'s arguments: HfArgumentParser over dynlora's dataclasses and all of TrainingArguments,
old flags as aliases, YAML / JSON config files, and ``config.yaml`` reproducing a run bit for bit."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dynlora.cli import _values, build_parser, main
from dynlora.errors import DynloraError
from dynlora.hf.arguments import DynloraTrainingArguments
from dynlora.methods.l1ra import L1RAConfig
from dynlora.training.arguments import config_values, config_yaml, recorded_config, run_config
from dynlora.training.config import RunConfig


def _options(*argv: str) -> RunConfig:
    return run_config(vars(_values(build_parser(), ["train", *argv])))


def test_no_flags_give_the_default_run():
    assert _options() == run_config({}) == RunConfig()
    assert config_values(RunConfig())["learning_rate"] == 1e-3


def test_old_flags_are_aliases_of_the_trainer_and_peft_names():
    old = _options("--lr", "0.002", "--batch-size", "4", "--epochs", "2", "--grad-accum", "2", "--output", "x",
                   "--warmup-ratio", "0.1", "--load-in-4bit", "--gradient-checkpointing", "--method", "l1ra",
                   "--min-rank", "2", "--l1ra-lambda", "0.3", "--rank", "4", "--train-size", "0", "--device", "cpu")
    new = _options("--learning_rate", "0.002", "--per_device_train_batch_size", "4", "--num_train_epochs", "2",
                   "--gradient_accumulation_steps", "2", "--output_dir", "x", "--warmup_steps", "0.1",
                   "--load_in_4bit", "--activation_checkpointing", "--method", "l1ra", "--min_rank", "2",
                   "--l1ra_lambda", "0.3", "--lora_r", "4", "--train_size", "0", "--train_on", "cpu")
    assert old == new
    t = old.trainer
    assert (t.learning_rate, t.per_device_train_batch_size, t.num_train_epochs, t.gradient_accumulation_steps,
            t.output_dir, t.warmup_steps) == (0.002, 4, 2, 2, "x", 0.1)
    assert old.model.quantize == "4bit" and t.activation_checkpointing and t.use_cpu
    assert old.data.train_size is None and old.adapters.rank == 4
    assert old.adapters.method_config == L1RAConfig(lam=0.3, min_rank=2)


def test_every_trainer_flag_reaches_the_trainer(tmp_path):
    config = _options("--report_to", "tensorboard", "--lr_scheduler_type", "cosine", "--weight_decay", "0.01",
                      "--logging_steps", "3", "--max_grad_norm", "0.5", "--save_strategy", "no", "--adam_beta2",
                      "0.99")
    assert isinstance(config.trainer, DynloraTrainingArguments)
    args = config.trainer.for_run(tmp_path, total_steps=40, tokens_across_devices=False)
    assert args.report_to == ["tensorboard"] and args.lr_scheduler_type == "cosine" and args.logging_steps == 3
    assert args.weight_decay == 0.01 and args.max_grad_norm == 0.5 and args.save_strategy == "no"
    assert args.adam_beta2 == 0.99 and args.learning_rate == 1e-3 and args.max_steps == 40


def test_without_trainer_flags_the_trainer_gets_dynlora_s_values(tmp_path):
    args = RunConfig().trainer.for_run(tmp_path, total_steps=188, tokens_across_devices=False)
    assert (args.learning_rate, args.per_device_train_batch_size, args.warmup_steps) == (1e-3, 16, 0.06)
    assert (args.logging_steps, args.save_steps, args.save_total_limit) == (9, 18, 2)  # 188 // 20, 0.1 x 188
    assert args.optim == "adamw_torch" and args.report_to == [] and not args.activation_checkpointing
    assert args.per_device_eval_batch_size == 64 and args.average_tokens_across_devices is False
    assert args.output_dir == str(tmp_path / "checkpoints") and args.data_seed == 0


CONFIGS = [
    {},
    dict(method="l1ra", method_config=L1RAConfig(lam=0.25, max_rank=12), targets=("query", "value"), train_size=0,
         learning_rate=3e-4, warmup_steps=5, output_dir="runs/x", load_in_8bit=True, dtype="bfloat16"),
    dict(method="module-alloc:topp", max_steps=30, seed=7, activation_checkpointing=True, save_every=0,
         report_to="tensorboard", lr_scheduler_type="cosine", logging_steps=2),
    dict(method="adaptive", targets=r".*\.(query|key)$", rank_budget=40, train_on="cpu", bf16=True),
]


@pytest.mark.parametrize("values", CONFIGS)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_reads_back_into_the_same_run(values, suffix, tmp_path):
    config = run_config(values)
    path = tmp_path / f"run{suffix}"
    path.write_text(config_yaml(config) if suffix == ".yaml" else json.dumps(config_values(config)))
    assert _options(str(path)) == config
    assert recorded_config(json.loads(json.dumps(config_values(config)))) == config  # run.json


def test_a_run_recorded_before_the_run_configuration_reads_back():
    """run.json of dynlora <= 0.5 held TrainOptions' flat fields: an unfinished run of then still resumes."""
    old = {"model": None, "task": None, "dataset": "d.csv", "text_column": "text", "label_column": "label",
           "method": "l1ra", "rank": 4, "alpha": 16.0, "dropout": 0.0, "targets": ["query", "value"], "epochs": 1.0,
           "max_steps": 12, "train_size": None, "batch_size": 8, "lr": 0.005, "warmup": 0.06, "weight_decay": 0.0,
           "max_length": 64, "eval_split": "test", "seed": 3, "output": "runs/x", "rank_budget": None,
           "budget_unit": "params", "save_every": 4, "dtype": None, "adapter_dtype": "float32", "bf16": False,
           "fp16": False, "grad_accum": 2, "gradient_checkpointing": True, "quantize": "8bit", "device": "cpu",
           "shard_base": False, "export_dtype": "base", "method_config": {"lam": 0.3, "pull": 1.0},
           "trainer": {"lr_scheduler_type": "cosine"}}
    config = recorded_config(old)
    assert config == run_config(dict(
        dataset="d.csv", method="l1ra", rank=4, targets=("query", "value"), max_steps=12, train_size=0,
        per_device_train_batch_size=8, learning_rate=0.005, seed=3, output_dir="runs/x", budget_unit="params",
        save_every=4, gradient_accumulation_steps=2, activation_checkpointing=True, load_in_8bit=True,
        train_on="cpu", method_config={"lam": 0.3, "pull": 1.0}, lr_scheduler_type="cosine"))


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nrank: 4\nmethod: l1ra\nl1ra_lambda: 0.2\nreport_to: tensorboard\n")
    config = _options(str(path), "--rank", "6", "--learning_rate", "5e-4")
    assert (config.adapters.rank, config.trainer.learning_rate, config.adapters.method_config.lam) == (6, 5e-4, 0.2)
    assert config.trainer.report_to == ["tensorboard"]


def test_an_unknown_setting_is_named_with_the_closest():
    with pytest.raises(DynloraError, match="'learning_rat'.*learning_rate"):
        run_config({"learning_rat": 0.1})


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
    assert saved["l1ra_lambda"] == 6.0 and saved["report_to"] == ["tensorboard"] and saved["learning_rate"] == 1e-3

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
