"""``weakground presets``: list the bundled experiment presets."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the bundled presets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weakground.config import PRESET_DIR, preset_names

    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:14s} {first}")
    return 0
