"""What a LoRA server needs to know about an exported adapter: pure functions over its PEFT config.

vLLM (``PEFTHelper``) reads ``rank_pattern`` and ``alpha_pattern``, refuses an adapter whose largest
rank exceeds ``--max-lora-rank`` (one of ``VLLM_MAX_LORA_RANKS``), and refuses ``modules_to_save``
(a trained task head), DoRA and LoRA biases.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PeftConfig

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class ServingHints:
    """The largest rank, the smallest ``--max-lora-rank`` that takes it (None: above every valid one), why a
    LoRA server cannot serve the adapter (empty: it can), and what it serves only approximately."""

    largest_rank: int
    max_lora_rank: int | None
    refusals: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def vllm_command(self, base: str, name: str, path: str, dtype: str = "auto") -> str | None:
        """vLLM's OpenAI-compatible server with this adapter loaded (None when it cannot be served);
        ``dtype``: the base's, which vLLM's own ``auto`` would lower to bf16 for a float32 base."""
        if self.refusals or self.max_lora_rank is None:
            return None
        served = f" --dtype {dtype}" if dtype != "auto" else ""
        return (f"python -m vllm.entrypoints.openai.api_server --model {base}{served} --enable-lora "
                f"--lora-modules {name}={path} --max-lora-rank {self.max_lora_rank}")


def serving_hints(config: PeftConfig, largest: int, gate_error: float | None = None) -> ServingHints:
    """Hints for an adapter of ``config`` whose largest rank is ``largest``; ``gate_error``: the measured
    logits error of input gates folded into B."""
    fits = [r for r in VLLM_MAX_LORA_RANKS if r >= largest]
    refusals = []
    kind = getattr(config.peft_type, "value", config.peft_type)  # PeftType is a str enum: its value, "LORA"
    if kind != "LORA":
        refusals.append(f"it is a {kind} adapter; LoRA servers load LORA adapters")
    if getattr(config, "modules_to_save", None):
        refusals.append(f"it trains a task head ({', '.join(sorted(config.modules_to_save))}) that LoRA servers "
                        "do not load (modules_to_save); serve the merged model instead (dynlora export --merge)")
    if getattr(config, "use_dora", False):
        refusals.append("it uses DoRA")
    if getattr(config, "lora_bias", False):
        refusals.append("it has LoRA biases")
    if not fits:
        refusals.append(f"its largest rank {largest} is above vLLM's largest --max-lora-rank "
                        f"{VLLM_MAX_LORA_RANKS[-1]}")
    warnings = ()
    if gate_error is not None:
        warnings = (f"its input gates were folded into B as their mean gate: the served logits differ from "
                    f"dynlora's by up to {gate_error:g} (measured on the calibration batches)",)
    return ServingHints(largest, fits[0] if fits else None, tuple(refusals), warnings)
