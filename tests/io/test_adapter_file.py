"""Adapter folders are checked before any weight is loaded: safetensors only, and every tensor fits the model."""

import pickle
from pathlib import Path

import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from dynlora.core.inject import AdapterConfig, adapters, inject
from dynlora.errors import DynloraError
from dynlora.io.adapter_file import check_adapter_folder
from dynlora.io.export import export_peft
from dynlora.io.load import load_peft
from tests.conftest import TINY, tiny_bert, tiny_gpt2, tiny_llama

WEIGHTS = "adapter_model.safetensors"


class Boom:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _llama(hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def exported(tmp_path) -> Path:
    """A dynlora adapter exported from a tiny Llama LM with unequal ranks (as after a reallocation)."""
    model = tiny_llama(lm=True)
    layers = inject(model, AdapterConfig(rank=2, alpha=4), generator=torch.Generator().manual_seed(0))
    first = next(iter(layers.values()))
    first.resize(keep=[0, 1], grow=1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(0, 0.1)
    return export_peft(model, tmp_path / "adapter")


def _refused(folder, model, *needles: str) -> str:
    with pytest.raises(DynloraError) as info:
        check_adapter_folder(folder, model)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_good_folder_passes_on_plain_injected_and_peft_models(exported):
    check_adapter_folder(exported, tiny_llama(lm=True))  # a plain base model, as dynlora generate has
    injected = tiny_llama(lm=True)
    inject(injected, AdapterConfig(rank=2))
    check_adapter_folder(exported, injected)  # names resolve to the LoraLayer that replaced the Linear
    check_adapter_folder(exported, PeftModel.from_pretrained(tiny_llama(lm=True), str(exported)))
    layers = load_peft(tiny_llama(lm=True), exported)
    assert next(iter(layers.values())).rank == 3


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_architecture_fits_itself_and_not_a_wider_twin(arch, tmp_path):
    """BERT / Llama Linear layers and GPT-2's Conv1D (weight stored as (in, out)), with their task heads."""
    model = TINY[arch]()
    inject(model, AdapterConfig(rank=2), generator=torch.Generator().manual_seed(0))
    export_peft(model, tmp_path / "adapter")
    check_adapter_folder(tmp_path / "adapter", TINY[arch]())
    check_adapter_folder(tmp_path / "adapter", model)
    wide = TINY[arch]()
    wide.config.update({"hidden_size": 64} if arch != "gpt2" else {"n_embd": 64})
    _refused(tmp_path / "adapter", type(wide)(wide.config), "does not fit this model", "vs in_features 64")


def test_peft_baseline_folders_pass(tmp_path):
    """What the peft-lora / peft-adalora baselines save (classifier head, AdaLoRA's lora_E) passes too."""
    lora = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    lora.save_pretrained(str(tmp_path / "lora"))
    check_adapter_folder(tmp_path / "lora", tiny_bert())
    ada = get_peft_model(tiny_bert(), AdaLoraConfig(task_type="SEQ_CLS", init_r=4, target_r=2, total_step=10,
                                                   target_modules=["query", "value"]))
    ada.save_pretrained(str(tmp_path / "ada"))
    check_adapter_folder(tmp_path / "ada", tiny_bert())
    _refused(tmp_path / "ada", tiny_bert(num_labels=3), "classifier.weight (2, 32) vs the model's (3, 32)")


def test_missing_folder_and_config(tmp_path, exported):
    _refused(tmp_path / "nope", tiny_llama(lm=True), "nope", "does not exist")
    _refused(exported / WEIGHTS, tiny_llama(lm=True), WEIGHTS, "is not a folder")
    (exported / "adapter_config.json").unlink()
    _refused(exported, tiny_llama(lm=True), "adapter_config.json is missing")


def test_pickle_weights_are_refused_and_never_unpickled(tmp_path, exported):
    marker = tmp_path / "unpickled"
    weights = exported / WEIGHTS
    weights.unlink()
    (exported / "adapter_model.bin").write_bytes(pickle.dumps(Boom(marker), protocol=4))
    _refused(exported, tiny_llama(lm=True), "adapter_model.bin", "pickle", WEIGHTS)
    with pytest.raises(DynloraError, match="adapter_model.bin"):
        load_peft(tiny_llama(lm=True), exported)
    weights.write_bytes(pickle.dumps(Boom(marker), protocol=2))  # a pickle under the safetensors name
    _refused(exported, tiny_llama(lm=True), str(weights), "pickle file written by torch.save, not safetensors")
    assert not marker.exists()


def test_torch_save_zip_under_the_safetensors_name(exported):
    weights = exported / WEIGHTS
    torch.save({"x": torch.zeros(2)}, weights)
    _refused(exported, tiny_llama(lm=True), str(weights), "zip file written by torch.save")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
def test_corrupt_or_truncated_safetensors(exported, damage):
    weights = exported / WEIGHTS
    data = weights.read_bytes()
    broken = {"truncate": data[:-7], "garbage": b"this is not a tensor file at all" * 4, "empty": b"",
              "header": data[:30]}[damage]
    weights.write_bytes(broken)
    _refused(exported, tiny_llama(lm=True), str(weights), "corrupt or truncated")
    model = tiny_llama(lm=True)
    with pytest.raises(DynloraError, match="corrupt or truncated"):
        load_peft(model, exported)
    assert adapters(model) == {}  # refused before anything was injected


def test_adapter_for_another_hidden_size_names_the_modules(exported):
    message = _refused(exported, _llama(hidden=48), "does not fit this model",
                       "model.layers.0.mlp.down_proj lora_B (32, 2) vs out_features 48",
                       "model.layers.0.mlp.gate_proj lora_A (2, 32) vs in_features 48")
    # per layer 6 A's (every projection reading the hidden state) and 5 B's (every one but gate/up) are wrong
    assert message.endswith("; ... (19 more)")
    model = _llama(hidden=48)
    with pytest.raises(DynloraError, match="does not fit"):
        load_peft(model, exported)
    assert adapters(model) == {}


def test_keys_naming_modules_the_model_lacks(exported):
    message = _refused(exported, _llama(layers=1), "model.layers.1.mlp.down_proj: no such module")
    assert message.endswith("; ... (4 more)") and "layers.0" not in message  # the 7 of layer 1, once each
    _refused(exported, tiny_gpt2(lm=True), "model.layers.0.mlp.down_proj: no such module", "(11 more)")


def test_rank_mismatch_and_foreign_keys(tmp_path, exported):
    tensors = {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 32),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.zeros(64, 2),
               "lm_head.weight": torch.zeros(100, 32)}
    save_file(tensors, str(exported / WEIGHTS))
    _refused(exported, tiny_llama(lm=True), "up_proj: lora_A rank 4 vs lora_B rank 2", "lm_head.weight: not a PEFT key")
