"""Fixtures of the training tests."""

import pytest

from dynlora.training.pipeline import train
from tests.training.runs import options


@pytest.fixture(scope="session")
def straight_l1ra(tiny_assets, tmp_path_factory):
    """One uninterrupted l1ra run of ``options``, for the tests that stop, kill or starve theirs and compare."""
    straight = tmp_path_factory.mktemp("straight") / "l1ra"
    train(options(tiny_assets, straight, "l1ra"), log=lambda s: None)
    return straight
