"""Where a run lives while it trains, and how an unfinished one is found again.

``dynlora train --output RUN`` works in ``.RUN.partial/`` beside ``RUN`` (``run.json`` with the
options first, then Trainer checkpoints under ``checkpoints/``) and renames it to ``RUN`` when done,
so ``RUN`` is never half-written. A run that was killed leaves ``.RUN.partial/`` behind;
``dynlora train --resume RUN`` reads the options from there and goes on from its last complete
checkpoint. A run that fails before its first checkpoint leaves nothing.

The folder name is a function of ``RUN`` alone, so every process of a data-parallel run agrees on it;
only the main process creates, writes and renames.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from dynlora.core.distributed import is_main_process, launched_processes
from dynlora.errors import DynloraError
from dynlora.io.checkpoint import last_complete_checkpoint

RUN_MARKER = "run.json"


def partial_folder(final: Path) -> Path:
    """``.NAME.partial`` beside ``final``: where an unfinished run lives."""
    return final.parent / f".{final.name}.partial"


def default_output() -> Path:
    """``runs/<timestamp>``; a multi-process run must name its folder (the processes' clocks differ)."""
    if launched_processes() > 1:
        raise DynloraError("give --output when training in several processes (torchrun / accelerate launch)")
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def start_run(output: str | None, options: dict[str, Any], resume: bool = False) -> tuple[Path, Path]:
    """(final folder, working folder). A new run refuses an unfinished one of the same name."""
    final = Path(output) if output else default_output()
    work = partial_folder(final)
    if not is_main_process():  # the main process checks and creates; the others only need the names
        return final, work
    if resume:
        if not (work / RUN_MARKER).is_file():
            done = " (it has finished)" if (final / RUN_MARKER).is_file() else ""
            raise DynloraError(f"no unfinished run to resume at {str(final)!r}{done}: {str(work)!r} is missing")
        return final, work
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / RUN_MARKER).is_file())):
        raise DynloraError(f"output {str(final)!r} exists and is not a dynlora run folder; give a new or empty folder")
    if work.exists():
        raise DynloraError(f"output {str(final)!r} has an unfinished run in {str(work)!r}: continue it with "
                           f"--resume {final}, or delete that folder")
    work.mkdir(parents=True)
    (work / RUN_MARKER).write_text(json.dumps({"options": options, "unfinished": True}, indent=2) + "\n")
    return final, work


def resumable(output: str, options: dict[str, Any]) -> bool:
    """Whether ``output`` has an unfinished run started with ``options`` that holds a complete checkpoint (go on
    with it: ``resume``). Any other unfinished run there is removed, so that a new one can start."""
    work = partial_folder(Path(output))
    if not work.exists():
        return False
    try:  # the options as run.json holds them (JSON: tuples read back as lists)
        same = json.loads((work / RUN_MARKER).read_text())["options"] == json.loads(json.dumps(options))
    except (OSError, ValueError, KeyError, TypeError):  # torn or from another version: not this run's
        same = False
    if same and last_complete_checkpoint(work / "checkpoints") is not None:
        return True
    shutil.rmtree(work)
    return False


def stored_options(output: str) -> dict[str, Any]:
    """The options an unfinished run was started with (``--resume``)."""
    work = partial_folder(Path(output))
    if not (work / RUN_MARKER).is_file():
        start_run(output, {}, resume=True)  # raises the right message
    return json.loads((work / RUN_MARKER).read_text())["options"]


def abandon(work: Path, err: BaseException, final: Path) -> BaseException:
    """After a failure: keep ``work`` when it holds a complete checkpoint (and say how to resume), else remove it."""
    if not is_main_process():
        return err
    checkpoint = last_complete_checkpoint(work / "checkpoints") if work.is_dir() else None
    if checkpoint is None:
        shutil.rmtree(work, ignore_errors=True)
        return err
    if isinstance(err, DynloraError):
        return DynloraError(f"{err}; the last complete checkpoint ({checkpoint.name}) stays: "
                            f"dynlora train --resume {final}")
    return err
