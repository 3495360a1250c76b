"""``dynlora generate``: load an exported causal-LM adapter into plain PEFT and answer prompts.

The adapter is a PEFT LoRA folder (``dynlora export``'s output, or a run folder's ``adapter/``); the
base model is the one named in its ``adapter_config.json``, the run's ``--model``, or ``--model``.
Prompts go through the model's chat template exactly as in training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynlora.errors import DynloraError


@dataclass(frozen=True)
class GenerateOptions:
    """What ``dynlora generate`` takes; checked on construction."""

    adapter: str
    prompts: tuple[str, ...]
    model: str | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise DynloraError("give at least one non-empty prompt")
        if self.max_new_tokens <= 0:
            raise DynloraError(f"max_new_tokens {self.max_new_tokens} must be > 0")
        if self.temperature < 0:
            raise DynloraError(f"temperature {self.temperature} must be >= 0 (0 = greedy)")


def adapter_folder(path: str) -> tuple[Path, str | None]:
    """(PEFT adapter folder, the base model its run was trained on) for an adapter or run folder."""
    folder = Path(path)
    run = folder / "run.json"
    if run.is_file() and (folder / "adapter" / "adapter_config.json").is_file():
        return folder / "adapter", json.loads(run.read_text())["options"].get("model")
    if not (folder / "adapter_config.json").is_file():
        raise DynloraError(f"{path!r} is not a PEFT adapter folder (no adapter_config.json) nor a dynlora run folder")
    return folder, None


def load_for_generation(opts: GenerateOptions, log: Any = print) -> tuple[Any, Any]:
    """(PeftModel in eval mode, tokenizer): the base causal LM with the adapter loaded by PEFT."""
    from peft import PeftConfig, PeftModel
    from safetensors import SafetensorError

    from dynlora.hf.models import load_causal_lm
    from dynlora.io.adapter_file import check_adapter_folder

    folder, run_model = adapter_folder(opts.adapter)
    config = PeftConfig.from_pretrained(str(folder))
    if str(config.task_type) != "CAUSAL_LM":
        raise DynloraError(f"adapter {opts.adapter!r} is for task type {config.task_type}; "
                           "generate needs a causal-LM (CAUSAL_LM) adapter")
    base = opts.model or run_model or config.base_model_name_or_path
    if base is None:
        raise DynloraError(f"adapter {opts.adapter!r} does not name its base model; give --model")
    model, tokenizer = load_causal_lm(base, log)
    try:
        check_adapter_folder(folder, model)  # safetensors only; every tensor fits this base model
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, OSError, SafetensorError) as err:  # shape mismatch, corrupt file
        first = (str(err) or type(err).__name__).strip().splitlines()[0]
        raise DynloraError(f"cannot load adapter {opts.adapter!r} onto {base!r}: {first}") from None
    return peft_model.eval(), tokenizer


@torch.no_grad()
def answer(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 64,
           temperature: float = 0.0, seed: int = 0) -> list[str]:
    """The model's reply to each prompt (chat template, then greedy or sampled decoding)."""
    from dynlora.data.instruct import prompt_ids

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    replies = []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
        replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return replies


def generate(opts: GenerateOptions, log: Any = print) -> list[str]:
    """Load the adapter and answer every prompt."""
    model, tokenizer = load_for_generation(opts, log)
    return answer(model, tokenizer, opts.prompts, opts.max_new_tokens, opts.temperature, opts.seed)
