"""``weakground data``: validate a dataset on disk, or write the synthetic scenes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools: validate a dataset on disk",
                       description="Validate a grounding dataset in its real layout and report problems with file "
                       "and line. Formats: flickr30k_entities, coco, referit, visual_genome.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("check", help="read FORMAT:PATH and report counts and problems")
    q.add_argument("spec", help="FORMAT:PATH, e.g. flickr30k_entities:/data/flickr30k")
    q.add_argument("--split", default="all", help="split to read (default: all)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=run_check)
    q = data_sub.add_parser("make", help="write a synthetic dataset (scenes) in Flickr30K Entities + COCO layout")
    q.add_argument("name", choices=["scenes"], help="which synthetic dataset")
    q.add_argument("out", type=Path, help="output folder")
    q.add_argument("--n-train", type=int, default=2000)
    q.add_argument("--n-val", type=int, default=200)
    q.add_argument("--n-test", type=int, default=500)
    q.add_argument("--n-test-unseen", type=int, default=500, help="images of held-out colour-category pairs")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_make)


def run_check(args: argparse.Namespace) -> int:
    from weakground.data.readers import check_dataset, format_check_report

    report = check_dataset(args.spec, args.split)
    print(json.dumps(report, indent=2) if args.json else format_check_report(report))
    return 0


def run_make(args: argparse.Namespace) -> int:
    from weakground.data.scenes import SceneSpec, write_scenes

    summary = write_scenes(args.out, SceneSpec(seed=args.seed), args.n_train, args.n_val, args.n_test,
                           args.n_test_unseen)
    print(json.dumps(summary, indent=2, default=str))
    return 0
