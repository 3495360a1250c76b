"""Method configs: knob metadata (flag, help, bounds) and the one check of it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dynlora.errors import DynloraError
from dynlora.methods import registry
from dynlora.methods.config import check_knobs, flag_of, knob, knobs, type_of


@dataclass(frozen=True)
class Toy:
    share: float = knob(0.5, "a share", gt=0, le=1)
    mode: str = knob("a", "a mode", choices=("a", "b"))
    cap: int | None = knob(None, "a cap", flag="--toy-cap", ge=1)

    def __post_init__(self) -> None:
        check_knobs(self)


def test_bounds_and_choices_name_the_field_and_the_valid_range():
    Toy(share=1.0, mode="b", cap=3)
    with pytest.raises(DynloraError, match=r"share 0 must be in \(0, 1\]"):
        Toy(share=0)
    with pytest.raises(DynloraError, match=r"mode 'c' is not valid; valid: a, b"):
        Toy(mode="c")
    with pytest.raises(DynloraError, match="cap 0 must be >= 1"):
        Toy(cap=0)
    with pytest.raises(DynloraError, match="share 'x'"):
        Toy(share="x")  # type: ignore[arg-type]


def test_flags_and_types_come_from_the_fields():
    fields = {f.name: f for f, _ in knobs(Toy)}
    assert [flag_of(f) for f in fields.values()] == ["--share", "--mode", "--toy-cap"]
    assert [type_of(f) for f in fields.values()] == [float, str, int]


def test_every_registered_config_has_help_and_defaults_that_pass_its_own_checks():
    for spec in registry.specs():
        if spec.config is None:
            continue
        spec.make_config()  # defaults are valid
        assert all(meta["help"] for _, meta in knobs(spec.config)), spec.name


def test_none_is_refused_for_a_knob_that_cannot_be_none():
    from dynlora.methods.l1ra import L1RAConfig

    with pytest.raises(DynloraError, match="reassign None is not valid; valid: spread, strongest, need, none"):
        L1RAConfig(reassign=None)
    with pytest.raises(DynloraError, match="lr_c None is not valid; valid: a float"):
        L1RAConfig(lr_c=None)
    assert L1RAConfig(lam=None).lam is None
