"""What every command shares: the ``--set`` flag, table printing, the machine line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_overrides(p: argparse.ArgumentParser, help_text: str = "override a config value, e.g. --set "
                  "train.epochs=3 (repeatable)") -> None:
    """The one ``--set SECTION.KEY=VALUE`` flag of train, eval and locate (each command decides which keys it
    takes: see :class:`weakground.config.OverridePolicy`)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Write the JSON report atomically, when ``--out`` asks for one."""
    if out:
        from weakground.engine.checkpoint import atomic_write_text

        atomic_write_text(out, json.dumps(report, indent=2))
        print(f"report: {out}")


def image_files(folder: Path) -> list[Path]:
    from weakground.errors import WeakgroundError
    from weakground.engine.inputs import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise WeakgroundError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
