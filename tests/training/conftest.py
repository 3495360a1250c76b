"""Fixtures of the training tests."""

import pytest
import torch

from dynlora.training.pipeline import train
from tests.training.runs import options


@pytest.fixture(scope="session")
def straight_l1ra(tiny_assets, tmp_path_factory):
    """One uninterrupted l1ra run of ``options``, for the tests that stop, kill or starve theirs and compare.

    It trains on one thread, as those tests train theirs (``one_torch_thread``): a session fixture is built
    before the module fixture that sets the thread count, and another number of threads splits the
    reductions differently, so the runs would no longer be bit for bit the same computation."""
    straight = tmp_path_factory.mktemp("straight") / "l1ra"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(options(tiny_assets, straight, "l1ra"), log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return straight
