"""The split a run is scored on."""

import pytest

from dynlora.data.instruct import load_instruct
from dynlora.data.splits import scored_on
from dynlora.data.text import load_task


@pytest.mark.parametrize("load", [lambda: load_task("trec6"), lambda: load_instruct("trec6-instruct")])
def test_validation_takes_the_place_of_test_and_nothing_else_moves(load):
    data = load()
    assert scored_on(data, "test") is data
    held = scored_on(data, "validation")
    assert held.test == data.validation and held.test != data.test
    assert (held.train, held.validation) == (data.train, data.validation)
