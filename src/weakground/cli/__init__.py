"""``weakground <command>``: train, evaluate and use weakly supervised grounding methods.

One module per command (``train``, ``evaluate``, ``locate``, ``caption``, ``serve``, ``data``, ``retrieve``, ``presets``), each
with ``add_parser(subparsers)`` and ``run(args) -> exit status``; the work itself lives in
:mod:`weakground.engine` (the inference layer, the training driver), which the web app and the Python API share.
Heavy imports (torch, matplotlib) happen inside ``run``, so ``weakground --help`` answers at once. Errors caused
by input (files, labels, settings) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from weakground.cli import caption, data, evaluate, export, locate, presets, retrieve, serve, train
from weakground.errors import WeakgroundError

COMMANDS = (train, evaluate, locate, caption, serve, data, retrieve, presets, export)

EPILOG = """examples:
  weakground train                                   # MCB attention (Fang et al.) on 2x2 multi-MNIST, CPU preset
  weakground train --preset cpu --set data.grid=3    # any setting can be overridden: SECTION.KEY=VALUE
  weakground eval --checkpoint runs/quickstart/checkpoints/train_best.safetensors --out report.json
  weakground eval --method center --data flickr30k_entities:/data/flickr30k --split test --out center.json
  weakground locate digits.png 3 7 --checkpoint runs/quickstart/checkpoints/train_best.safetensors
  weakground locate photo.jpg "the cat" "a red shirt" --out overlay.png   # zero-training `bridge`, no checkpoint
  weakground locate --folder photos/ --phrases phrases.txt --out overlays/
  weakground locate --demo astronaut "the astronaut" "the flag" --out locate.png   # a bundled real photo
  weakground serve --port 8000                        # web page + JSON API at http://127.0.0.1:8000
  weakground train --preset multilevel_cpu                                 # caption-level training on scenes
  weakground train --preset ss_attention_cpu                               # a grounded captioner (Hu et al.)
  weakground caption photo.png --checkpoint runs/ss_attention_cpu/checkpoints/train_best.safetensors --out cap.png
  weakground retrieve --checkpoint runs/multilevel_cpu/checkpoints/train_best.safetensors --folder photos/ --text "a red circle"
"""


def build_parser() -> argparse.ArgumentParser:
    from weakground.version import __version__

    parser = argparse.ArgumentParser(
        prog="weakground", description="Weakly supervised visual grounding: learn where a phrase is in an image "
        "from image-level text alone, then turn a phrase into a heatmap, a point and boxes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"weakground {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except WeakgroundError as exc:
        print(f"weakground: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weakground: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
