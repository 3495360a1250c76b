"""What a LoRA server needs: the largest rank, the smallest vLLM --max-lora-rank, refusals and warnings."""

from peft import AdaLoraConfig, LoraConfig

from dynlora.io.model_card import rank_by_type
from dynlora.io.serving import VLLM_MAX_LORA_RANKS, serving_hints


def test_the_smallest_valid_max_lora_rank_and_the_command():
    hints = serving_hints(LoraConfig(r=4, target_modules=["q", "v"], rank_pattern={"v": 12}), 12)
    assert (hints.largest_rank, hints.max_lora_rank, hints.refusals, hints.warnings) == (12, 16, (), ())
    assert hints.vllm_command("base", "mine", "/a") == ("python -m vllm.entrypoints.openai.api_server --model base "
                                                      "--enable-lora --lora-modules mine=/a --max-lora-rank 16")
    assert hints.vllm_command("base", "mine", "/a", "float32") == (
        "python -m vllm.entrypoints.openai.api_server --model base --dtype float32 "
        "--enable-lora --lora-modules mine=/a --max-lora-rank 16")  # vLLM's auto would serve a float32 base in bf16
    assert serving_hints(LoraConfig(r=8, target_modules=["q"]), 8).max_lora_rank == 8  # exactly a valid one
    assert serving_hints(LoraConfig(r=2, target_modules=["q"]), 2).max_lora_rank == 8  # 1 < 2: the next is 8


def test_what_a_lora_server_refuses_or_serves_approximately():
    head = serving_hints(LoraConfig(r=4, target_modules=["q"], modules_to_save=["classifier"]), 4)
    assert head.vllm_command("b", "n", "p") is None and "classifier" in head.refusals[0]
    assert "--merge" in head.refusals[0]
    wide = serving_hints(LoraConfig(r=4, target_modules=["q"]), VLLM_MAX_LORA_RANKS[-1] + 1)
    assert wide.max_lora_rank is None and "above vLLM's largest --max-lora-rank 512" in wide.refusals[0]
    gated = serving_hints(LoraConfig(r=4, target_modules=["q"]), 4, gate_error=0.0123)
    assert gated.vllm_command("b", "n", "p") is not None and "0.0123" in gated.warnings[0]
    ada = serving_hints(AdaLoraConfig(target_modules=["q"], total_step=10), 6)
    assert ada.vllm_command("b", "n", "p") is None and "ADALORA adapter" in ada.refusals[0]


def test_rank_by_type_groups_by_the_last_name():
    ranks = {"l.0.attn.q": 2, "l.1.attn.q": 6, "l.0.mlp.up": 8, "l.1.mlp.up": 0}
    assert rank_by_type(ranks) == {"q": (2, 8, 6), "up": (2, 8, 8)}
