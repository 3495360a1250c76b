"""Peak memory of a block of code: CUDA allocator peak on GPU, sampled resident set size on CPU."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torch
from transformers import TrainerCallback

from dynlora.core.surgery import unwrap_optimizer

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return 0.0


class PeakMemory:
    """Context manager: ``peak_mb`` (peak during the block) and ``delta_mb`` (peak minus the start).

    On CUDA it reads ``torch.cuda.max_memory_allocated``; on CPU a thread samples the RSS every
    ``interval`` seconds, so very short spikes can be missed. ``cuda`` (default: whether there is a GPU)
    says which: a CPU run on a GPU machine measures the RSS.
    """

    def __init__(self, interval: float = 0.005, cuda: bool | None = None) -> None:
        self.interval = interval
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.start_mb = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.peak_mb = self.start_mb
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


def _storage_of(param: torch.Tensor) -> int | None:
    """The data pointer of a parameter's storage: its local shard's for an FSDP2 (DTensor) parameter, None
    when it has none of its own (an FSDP2 parameter between an all-gather and its reshard)."""
    local = getattr(param, "_local_tensor", param)  # DTensor: the shard this process holds
    try:
        return local.untyped_storage().data_ptr()
    except RuntimeError:
        return None


class SavedTensorBytes:
    """Context manager counting the bytes autograd saves for backward (the activation memory).

    Storages are counted once; storages of the model's own parameters are not counted (they exist
    anyway). Deterministic, so it compares methods on a CPU where the allocator peak is not visible.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._skip = self._param_storages()
        self._seen: set[int] = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.nn.Parameter):  # a weight: FSDP2's all-gathered ones are not among the model's
            return t
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._skip and ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    def _param_storages(self) -> set[int]:
        return {ptr for p in self.model.parameters() if (ptr := _storage_of(p)) is not None}

    def reset(self) -> int:
        """Start a new count (parameters may have been resized since); returns the finished one."""
        done, self.bytes = self.bytes, 0
        self._seen.clear()
        self._skip = self._param_storages()
        return done

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of trainable parameters' gradients plus the optimizer state (what training adds to weights)."""
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = 0
    if optimizer is not None:
        for entry in optimizer.state.values():
            state += sum(v.numel() * v.element_size() for v in entry.values() if torch.is_tensor(v))
    return grads + state


class ActivationMemoryCallback(TrainerCallback):
    """Bytes autograd saved for backward during a Trainer run: the peak, and the steady state.

    ``peak_bytes`` is the largest micro-batch of the run; ``steady_bytes`` the median, over the second
    half of the optimizer steps, of each step's largest micro-batch (what a method that switches
    adapters off after a warm-up costs once it has settled).
    """

    def __init__(self) -> None:
        self.counter: SavedTensorBytes | None = None
        self.peak_bytes = 0
        self.per_step: list[int] = []
        self._step_peak = 0
        self.state_bytes = 0

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs to report the whole run's figures (saved in each checkpoint)."""
        return {"peak_bytes": self.peak_bytes, "per_step": list(self.per_step), "state_bytes": self.state_bytes}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.peak_bytes, self.state_bytes = int(state["peak_bytes"]), int(state["state_bytes"])
        self.per_step = [int(b) for b in state["per_step"]]

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.counter = SavedTensorBytes(model)
        self.counter.__enter__()

    def _flush(self) -> None:
        if self.counter is not None:
            done = self.counter.reset()
            self.peak_bytes = max(self.peak_bytes, done)
            self._step_peak = max(self._step_peak, done)

    @property
    def steady_bytes(self) -> int:
        half = self.per_step[len(self.per_step) // 2:]
        return int(sorted(half)[len(half) // 2]) if half else self.peak_bytes

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kwargs: Any) -> None:
        self._flush()
        self.per_step.append(self._step_peak)
        self._step_peak = 0
        if optimizer is not None:
            self.state_bytes = max(self.state_bytes, training_state_bytes(model, unwrap_optimizer(optimizer)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.counter = None
