"""``weakground eval``: score a method, on a phrase-grounding dataset (``--data``) or on multi-MNIST."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakground.cli.common import add_overrides, write_report
from weakground.errors import WeakgroundError

DESCRIPTION = """Two modes.

Phrase grounding (--data FORMAT:PATH): read a split with the dataset readers, ask the method for a heatmap per \
phrase, and score the pointing game under the protocol flags below, with attention correctness, the centre and \
random baselines on the same queries, a per-type breakdown and, for methods with a joint image-text space, \
Recall@1/5/10 over the split's captions. Prints a table with the protocol line; --out writes the JSON report. A \
checkpoint's learned settings are fixed; --set eval.shift_average=N (heatmaps averaged over N x N shifted copies; \
1: one pass) and --set data.eval_resize=true|false change how it reads images.

Multi-MNIST (--checkpoint only, no --data): rebuild the test split from the checkpoint's data settings \
(overridable with --set data.KEY=VALUE) and score boxes from the method's heatmaps against the digits' ink boxes, \
or with --set eval.ground_truth=patch against the 28x28 patches they were pasted into; the box threshold is the \
one chosen on validation at training (against ink boxes), --set eval.box_threshold=F replaces it. AP counts \
the boxes on absent digits' maps as false positives (--set eval.absent_detections=ignore: the older protocol, \
the present digits only; checkpoints written before the option existed default to it)."""

EXAMPLES = """examples:
  weakground eval --method center --data flickr30k_entities:/data/flickr30k --split test --out center.json
  weakground eval --method center --data coco:/data/coco --split val2014 --tolerance 15 --min-area 0.05
  weakground eval --checkpoint runs/quickstart/checkpoints/train_best.safetensors --out report.json"""

# Flags that only the phrase-grounding mode reads.
PHRASE_ONLY = ("tolerance", "union", "min_area", "grid_argmax", "strict", "visualize", "phrase_context", "retrieval")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a method: phrase grounding on a dataset (--data), or a multi-MNIST "
                       "checkpoint", formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION,
                       epilog=EXAMPLES)
    p.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint written by train (learned methods)")
    p.add_argument("--method", help="registered method name, e.g. center (a fixed baseline that needs no "
                   "checkpoint); with --checkpoint it must name the checkpoint's method")
    p.add_argument("--data", metavar="FORMAT:PATH", help="dataset to score phrase grounding on; FORMAT is one of "
                   "flickr30k_entities, coco, referit, visual_genome")
    add_overrides(p)
    p.add_argument("--split", default="test", help="split to score: test (default), val, train, test_unseen "
                   "(synthetic scenes), a COCO split such as val2014, karpathy_test (Flickr30K Entities with "
                   "dataset_flickr30k.json), or all; multi-MNIST takes val or test")
    p.add_argument("--max-images", type=int, help="score only the first N images of the split")
    p.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
    _add_protocol_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=run)


def _add_protocol_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pointing-game protocol (with --data; every setting is printed with the numbers)")
    g.add_argument("--tolerance", type=float, metavar="PX", help="a point within PX pixels (Euclidean distance) of "
                   "a ground-truth box is a hit (default 0, as in phrase-grounding papers; Zhang et al. use 15)")
    g.add_argument("--union", action="store_true", help="score against the union box of a phrase's boxes "
                   "(default: a hit on any one box counts)")
    g.add_argument("--min-area", type=float, metavar="FRACTION", help="skip phrases whose union box covers less "
                   "than this fraction of the image (default 0: skip none; 0.05 is common)")
    g.add_argument("--grid-argmax", action="store_true", help="take the argmax on the method's feature grid, mapped "
                   "to the cell centre (default: argmax of the map bilinearly resized to the image)")
    g.add_argument("--strict", action="store_true", help="fail with one line on the first dataset or image problem "
                   "(default: skip it and count it in the report's 'skipped' block)")
    g.add_argument("--visualize", type=Path, metavar="DIR", help="write overlay PNGs (heatmap, predicted point, "
                   "ground-truth boxes) for the first --n-visualize queries into DIR")
    g.add_argument("--n-visualize", type=int, default=16, metavar="N", help="queries drawn by --visualize "
                   "(default 16)")
    g.add_argument("--phrase-context", choices=("phrase", "sentence"), help="phrase: encode each phrase on its own; "
                   "sentence: read each caption phrase inside its caption, as Akbari et al. evaluate on Flickr30K "
                   "(multilevel, matchmap; default: the checkpoint's eval.phrase_context, else phrase)")
    g.add_argument("--retrieval", choices=("embedding", "score"), help="Recall@K ranked by the encode_image . "
                   "encode_text dot product (embedding) or by the method's trained score of every image with every "
                   "caption (score; the embedding's figures then come alongside; default: the checkpoint's "
                   "eval.retrieval, else embedding)")


def run(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _eval_phrases(args)
    if args.method is not None:
        raise WeakgroundError("eval --method needs --data FORMAT:PATH (without --data, eval scores a multi-MNIST "
                              "--checkpoint)")
    if args.checkpoint is None:
        raise WeakgroundError("eval needs --data FORMAT:PATH with --method and/or --checkpoint, or a multi-MNIST "
                              "--checkpoint")
    given = [f"--{name.replace('_', '-')}" for name in PHRASE_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise WeakgroundError(f"eval {given[0]} applies to phrase grounding: add --data FORMAT:PATH")
    return _eval_multimnist(args)


def _eval_multimnist(args: argparse.Namespace) -> int:
    from weakground.config import OverridePolicy, override_config, to_dict
    from weakground.data.splits import build_splits
    from weakground.engine.driver import machine_description
    from weakground.engine.evaluate import evaluate_label_grounding, label_summary_rows, print_table
    from weakground.engine.inference import load_checkpoint
    from weakground.engine.trainer import resolve_device

    from weakground.methods import Captioner

    if args.split not in ("val", "test"):
        raise WeakgroundError(f"eval --split {args.split!r}: multi-MNIST checkpoints are scored on val or test "
                              "(captioners too)")
    device = resolve_device("auto")
    model, config = load_checkpoint(args.checkpoint, device)
    if isinstance(model, Captioner):
        return _eval_captioner(args, model, config)
    policy = OverridePolicy(("data.*", "eval.ground_truth", "eval.box_threshold", "eval.absent_detections"),
                            "only data.KEY=VALUE, eval.ground_truth=ink|patch, eval.box_threshold=F and "
                            "eval.absent_detections=count|ignore apply to multi-MNIST evaluation")
    config = override_config(config, args.overrides, policy, "eval")
    split = build_splits(config.data, (args.split,))[args.split]
    report = evaluate_label_grounding(model, split, config.eval, device, args.max_images,
                                      progress=not args.no_progress)
    report.update({"checkpoint": str(args.checkpoint), "split": args.split, "data": to_dict(config.data),
                   "machine": machine_description()})
    print_table(label_summary_rows(report))
    write_report(report, args.out)
    return 0


def _eval_captioner(args: argparse.Namespace, model: object, config: object) -> int:
    """A captioner's table on its own dataset's split: caption metrics and grounding F1 (``--max-images``)."""
    from weakground.engine.driver import machine_description
    from weakground.engine.tasks.captioning import evaluate_captioner

    if args.overrides:
        raise WeakgroundError("eval --set does not apply to a captioner's checkpoint (its settings are fixed)")
    report = evaluate_captioner(model, config, args.split, args.max_images, progress=not args.no_progress)
    report.update({"checkpoint": str(args.checkpoint), "split": args.split, "machine": machine_description()})
    for key, value in report["captions"].items():
        if isinstance(value, float):
            print(f"  {key:8s} {value:.3f}")
    print(f"  F1_all   {report['grounding']['f1_all']:.3f}\n  F1_loc   {report['grounding']['f1_loc']:.3f}")
    print(f"  regions from {report['regions']['source']}{' (ORACLE)' if report['regions']['oracle'] else ''}, "
          f"{report['n_images']} images, beam {report['beam']}")
    write_report(report, args.out)
    return 0


def _protocol(args: argparse.Namespace):  # noqa: ANN202  (a PointingProtocol; typed lazily to keep --help fast)
    from weakground.metrics import PointingProtocol

    try:
        return PointingProtocol(tolerance=0.0 if args.tolerance is None else args.tolerance,
                                box_rule="union" if args.union else "any",
                                min_area=0.0 if args.min_area is None else args.min_area,
                                argmax_on="grid" if args.grid_argmax else "image")
    except ValueError as exc:
        raise WeakgroundError(f"eval protocol: {exc}") from None


def _eval_phrases(args: argparse.Namespace) -> int:
    from weakground.engine.driver import machine_description
    from weakground.engine.inference import load
    from weakground.engine.phrase_eval import evaluate_phrase_grounding, format_phrase_report
    from weakground.engine.trainer import resolve_device
    from weakground.methods import Grounder  # noqa: F401  (importing the package registers every method)
    from weakground.registry import METHODS

    if args.max_images is not None and args.max_images < 1:
        raise WeakgroundError(f"eval --max-images {args.max_images}: must be >= 1")
    if args.n_visualize < 0:
        raise WeakgroundError(f"eval --n-visualize {args.n_visualize}: must be >= 0")
    protocol = _protocol(args)
    if args.checkpoint is None and args.method is None:
        raise WeakgroundError("eval --data needs --method NAME or --checkpoint PATH")
    device = resolve_device("auto")
    if args.checkpoint is None and METHODS.get(args.method).trainable:
        raise WeakgroundError(f"eval --method {args.method!r} is a learned method: give its --checkpoint")
    predictor = load(args.checkpoint if args.checkpoint is not None else args.method, overrides=args.overrides,
                     device=device, command="eval")
    if args.checkpoint is not None and args.method not in (None, predictor.name):
        raise WeakgroundError(f"{args.checkpoint}: checkpoint holds method {predictor.name!r}, not "
                              f"--method {args.method!r}")
    saved = predictor.config.eval if predictor.config is not None else None
    context = args.phrase_context or (saved.phrase_context if saved is not None else "phrase")
    retrieval = args.retrieval or (saved.retrieval if saved is not None else "embedding")
    report = evaluate_phrase_grounding(predictor.model, args.data, args.split, protocol, strict=args.strict,
                                       max_images=args.max_images, device=device, progress=not args.no_progress,
                                       visualize_dir=args.visualize, n_visualize=args.n_visualize,
                                       phrase_context=context, retrieval=retrieval)
    report.update({"checkpoint": None if args.checkpoint is None else str(args.checkpoint),
                   "machine": machine_description()})
    print(format_phrase_report(report))
    if args.visualize is not None:
        print(f"overlays: {len(report['visualizations'])} in {args.visualize}")
    write_report(report, args.out)
    return 0
