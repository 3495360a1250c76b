"""Device choice: ``auto`` picks CUDA only when torch sees it; bad names and a missing GPU are one-line errors."""

import pytest
import torch

from dynlora.errors import DynloraError
from dynlora.hf.device import check_device, resolve_device
from dynlora.hf.memory import PeakMemory
from dynlora.training.arguments import run_config


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "cuda:0", "", "CPU"])
def test_bad_device_names_the_value_and_the_valid_ones(bad):
    with pytest.raises(DynloraError, match=f"device {bad!r} is not valid; valid: auto, cpu, cuda"):
        check_device(bad)
    with pytest.raises(DynloraError, match="is not valid"):
        run_config(dict(train_on=bad))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_before_anything_runs():
    with pytest.raises(DynloraError, match="'cuda' is not available"):
        run_config(dict(train_on="cuda"))


def test_cpu_peak_is_the_sampled_rss_even_where_cuda_exists():
    with PeakMemory(cuda=False) as peak:
        # 64 MB touched: above glibc's largest mmap threshold (32 MB), so fresh pages however much of the heap
        # earlier tests freed (a 32 MB block could reuse resident heap and not raise the RSS: it failed in a
        # long run in another test order)
        block = torch.ones(64 * 2**20, dtype=torch.uint8)
        block.add_(1)
    assert not peak.cuda and peak.delta_mb >= 32, peak.delta_mb
