"""Where derived, recomputable artefacts live: embedding tables, generated datasets, demo folders."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$WEAKGROUND_CACHE`` if set, else ``~/.cache/weakground``; everything in it can be deleted and rebuilt."""
    return Path(os.environ.get("WEAKGROUND_CACHE") or Path.home() / ".cache" / "weakground")
