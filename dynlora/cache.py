"""Where dynlora keeps what it makes once and reuses (converted models, parser snapshots)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DYNLORA_CACHE``, else ``~/.cache/dynlora``."""
    return Path(os.environ.get("DYNLORA_CACHE", Path.home() / ".cache" / "dynlora"))
