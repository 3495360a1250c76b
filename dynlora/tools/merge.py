"""A full model folder with a run's adapter merged into the base weights, for servers without LoRA support.

PEFT loads the exported adapter onto the run's base model and ``merge_and_unload`` folds it in; the
result is saved by transformers (safetensors, in the base's dtype) with the tokenizer, so
``AutoModelFor*.from_pretrained(folder)`` serves it with no dynlora and no PEFT.

``dynlora export RUN --output DIR --merge`` writes one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dynlora.errors import DynloraError
from dynlora.training.arguments import recorded_config


def merge_run(run: Path, folder: Path, log: Any = print) -> Path:
    """Write ``run``'s base model with its adapter merged into the new ``folder``; aside, then renamed."""
    from peft import PeftConfig, PeftModel

    from dynlora.hf.models import load_causal_lm, load_classifier

    record = json.loads((run / "run.json").read_text())
    options = record["options"]
    quantize = recorded_config(options).model.quantize
    if quantize:
        raise DynloraError(f"run {str(run)!r} trained on a {quantize}-quantized base: merging would "
                           "write dequantized weights; export the adapter (no --merge) and serve it as LoRA")
    config = PeftConfig.from_pretrained(str(run / "adapter"))
    if str(config.task_type) == "CAUSAL_LM":
        base, tokenizer = load_causal_lm(options.get("model"), log, dtype=options.get("dtype"), device="cpu")
    else:
        base, tokenizer = load_classifier(options.get("model"), int(record["num_labels"]),
                                          dtype=options.get("dtype"), device="cpu")
    merged = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
