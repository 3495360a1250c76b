"""Rank discovery for plain PEFT: the per-module ranks a run learned, as a ``peft.LoraConfig`` to train from
scratch (``rank_pattern``), with each module's alpha set so that its scale is the run's ``alpha / rank``.

``dynlora export RUN --output DIR --rank-pattern-only`` writes it as ``DIR/adapter_config.json``;
``LoraConfig.from_pretrained(DIR)`` then gives ``get_peft_model`` those ranks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from peft import LoraConfig

from dynlora.errors import DynloraError


def rank_pattern_config(run: Path) -> LoraConfig:
    """The ``LoraConfig`` of ``run``'s final ranks (its exported adapter's targets, task and base), at the
    run's LoRA scale ``alpha / rank``, with fresh (PEFT default) initialisation."""
    exported = LoraConfig.from_pretrained(str(run / "adapter"))
    options = json.loads((run / "run.json").read_text())["options"]
    ranks = json.loads((run / "ranks.json").read_text())
    kept = {name: r for name, r in ranks.items() if r > 0}
    if not kept:
        raise DynloraError(f"run {str(run)!r} ended with every rank at 0: there is no pattern to export")
    values = list(kept.values())
    r = max(set(values), key=values.count)  # the commonest rank; the others go into rank_pattern
    scale = float(options["alpha"]) / int(options["rank"])
    pattern = {name: rank for name, rank in kept.items() if rank != r}
    return LoraConfig(task_type=exported.task_type, r=r, lora_alpha=r * scale, target_modules=sorted(kept),
                      rank_pattern=pattern, alpha_pattern={name: rank * scale for name, rank in pattern.items()},
                      lora_dropout=float(options["dropout"]), modules_to_save=exported.modules_to_save,
                      base_model_name_or_path=exported.base_model_name_or_path)


def write_rank_pattern(run: Path, folder: Path) -> Path:
    """``folder/adapter_config.json`` of ``rank_pattern_config(run)``; written aside, then renamed."""
    config = rank_pattern_config(run)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config.save_pretrained(str(tmp))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / "adapter_config.json"
