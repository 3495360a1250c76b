"""PEFT-shaped configs: one class per native method from the registry, PEFT's field names, checked on
construction with one-line errors."""

import dataclasses

import pytest

import dynlora
from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.methods.l1ra import L1RAConfig
from dynlora.methods.config_classes import config_classes
from dynlora.methods.peft_configs import DynamicLoraConfig


def test_one_class_per_native_method_with_its_knobs_as_fields():
    classes = config_classes()
    native = {s.name for s in registry.specs() if s.build is not None}
    assert {c().method for c in classes.values()} == native
    l1ra = dynlora.L1RALoraConfig(r=4, lora_alpha=8, lam=0.9)
    assert isinstance(l1ra, DynamicLoraConfig) and l1ra.method == "l1ra"
    assert l1ra.method_config == L1RAConfig(lam=0.9)
    assert {"r", "lora_alpha", "lora_dropout", "target_modules", "lam", "lr_c"} <= {
        f.name for f in dataclasses.fields(l1ra)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        l1ra.r = 2


def test_generic_config_takes_a_method_and_its_settings():
    config = DynamicLoraConfig(method="module-alloc:topp", method_config={"threshold": 0.8})
    assert config.method_config.strategy == "topp" and config.method_config.threshold == 0.8
    assert DynamicLoraConfig(target_modules=["query", "value"]).target_modules == ("query", "value")


@pytest.mark.parametrize("make,needles", [
    (lambda: dynlora.L1RALoraConfig(lam=-1.0), ["lam", "-1.0"]),
    (lambda: dynlora.L1RALoraConfig(r=0), ["r 0"]),
    (lambda: DynamicLoraConfig(lora_dropout=1.0), ["lora_dropout 1.0"]),
    (lambda: DynamicLoraConfig(method="peft-lora"), ["'peft-lora'", "l1ra"]),
    (lambda: DynamicLoraConfig(method="nope"), ["'nope'"]),
    (lambda: DynamicLoraConfig(method="lora", method_config={"lam": 1}), ["no settings", "lam"]),
])
def test_bad_settings_are_one_line_errors(make, needles):
    with pytest.raises(DynloraError) as caught:
        make()
    assert len(str(caught.value).splitlines()) == 1
    for needle in needles:
        assert needle in str(caught.value), caught.value
