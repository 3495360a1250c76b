"""What a failed write was: the errno of a full disk (or any OSError) behind the different exceptions
that torch, safetensors and Python raise for it."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

_OS_ERROR = re.compile(r"os error (\d+)")  # safetensors: "I/O error: No space left on device (os error 28)"
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter", "file write failed")  # torch.save's C++ writer
_NEARLY_FULL = 1 << 20  # bytes: a write that failed with less than this free failed for want of space


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the filesystem holding ``folder`` (its nearest existing parent); None if unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_failure(err: BaseException, folder: Path) -> str | None:
    """``[Errno N] reason: path`` when ``err`` is a failed write into ``folder``, else None (not a write error).

    torch.save reports a full disk as a RuntimeError without an errno; then the free space decides.
    """
    if isinstance(err, OSError) and err.errno is not None:
        where = f": {err.filename}" if err.filename else ""
        return f"[Errno {err.errno}] {err.strerror or os.strerror(err.errno)}{where}"
    found = _OS_ERROR.search(str(err))
    if found:
        code = int(found.group(1))
        return f"[Errno {code}] {os.strerror(code)}"
    if isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITER):
        free = free_bytes(folder)
        if free is not None and free < _NEARLY_FULL:
            return f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)} ({free} bytes free)"
        return f"the write failed: {' '.join(str(err).split())[:200]}"
    return None
