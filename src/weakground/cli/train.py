"""``weakground train``: train a method from a preset, evaluate it, write a report and a figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakground.cli.common import add_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method from a preset, evaluate it, write a report and a figure",
                       description="Train (backbone pretraining, then end-to-end), evaluate on the test split, and "
                       "write config.json, CSV logs, checkpoints, report.json and grounding.png to --out. Under "
                       "`torchrun --nproc_per_node N -m weakground train ...` it trains data-parallel on N processes "
                       "(docs/distributed.md).")
    p.add_argument("--preset", default="quickstart", help="preset name (see `weakground presets`) or a YAML path "
                   "(default: quickstart)")
    add_overrides(p)
    p.add_argument("--out", type=Path, help="run directory (default: runs/<preset name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weakground.config import load_config
    from weakground.engine.driver import run_experiment
    from weakground.engine.tasks import task_for

    config = load_config(args.preset, args.overrides)
    out = args.out or Path("runs") / config.name
    # What the user --set on purpose may differ from the run being resumed; anything else is refused.
    explicit = [o.split("=", 1)[0].strip() for o in args.overrides]
    report = run_experiment(config, out, resume=args.resume, progress=not args.no_progress, allowed_changes=explicit)
    if not report:  # a torchrun process other than rank 0: rank 0 prints the summary
        return 0
    task_for(config).print_summary(config, report, out)
    print(f"checkpoint: {report['train']['checkpoint']}")
    return 0
