"""The config classes written from other configs are current, and are plain source a user's IDE and
``help()`` read: ``methods/lora_configs.py`` and ``methods/l1ra_alloc_config.py``."""

import dataclasses
import inspect
import pydoc

import dynlora
from dynlora.methods import registry
from dynlora.methods.config_classes import config_class
from dynlora.methods.peft_configs import DynamicLoraConfig
from dynlora.methods.write_configs import (L1RA_ALLOC_CONFIG, LORA_CONFIGS, l1ra_alloc_config_source,
                                           lora_configs_source)


def test_the_written_sources_are_current():
    # stale after a knob changed: run `python -m dynlora.methods.write_configs`
    assert LORA_CONFIGS.read_text() == lora_configs_source()
    assert L1RA_ALLOC_CONFIG.read_text() == l1ra_alloc_config_source()


def test_each_native_method_has_a_written_class_with_its_knobs_and_their_defaults():
    base = {f.name for f in dataclasses.fields(DynamicLoraConfig)}
    for spec in registry.specs():
        if spec.build is None:
            continue
        cls = config_class(spec.name)
        assert cls.__module__ == "dynlora.methods.lora_configs" and cls.method == spec.name
        assert inspect.getsourcefile(cls) == str(LORA_CONFIGS)
        own = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in base}
        knobs = {f.name: f.default for f in dataclasses.fields(spec.config)} if spec.config is not None else {}
        assert own == knobs, spec.name
        assert cls().method_config == registry.resolve_config(spec.name, None)


def test_help_shows_a_methods_fields_and_what_each_knob_does():
    text = pydoc.render_doc(dynlora.L1RALoraConfig, renderer=pydoc.plaintext)
    for needle in ("lam: 'float | None' = None", "r: 'int' = 8", "- lr_c: the gates' learning rate"):
        assert needle in text, needle


def test_the_combined_config_keeps_each_parts_flags():
    from dynlora.methods.config import flag_of, knobs
    from dynlora.methods.l1ra import L1RAConfig
    from dynlora.methods.l1ra_alloc_config import L1RAAllocConfig
    from dynlora.methods.module_alloc import ModuleAllocConfig

    flags = {f.name: flag_of(f) for f, _ in knobs(L1RAAllocConfig)}
    assert flags["lam"] == "--l1ra-lambda" and flags["threshold"] == "--l1ra-threshold"
    assert flags["select_threshold"] == "--threshold" and flags["k"] == "--k"
    assert len(flags) == len(knobs(L1RAConfig)) + len(knobs(ModuleAllocConfig))
    config = L1RAAllocConfig(select_threshold=0.7, lam=0.3)
    assert config.select_config().threshold == 0.7 and config.rank_config().lam == 0.3
