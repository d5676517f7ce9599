"""``weakground <command>``: train, evaluate and use weakly supervised grounding methods.

Heavy imports (torch, matplotlib) happen inside the commands, so ``weakground --help`` answers at once.
Errors caused by input (files, labels, settings) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weakground.errors import WeakgroundError

if TYPE_CHECKING:  # annotations only: the CLI imports torch inside the commands, so --help stays instant
    import torch

    from weakground.methods import Grounder

EPILOG = """examples:
  weakground train                                   # seed 000 on 2x2 multi-MNIST, small CPU preset (~5 min)
  weakground train --preset cpu --set data.grid=3    # any setting can be overridden: SECTION.KEY=VALUE
  weakground eval --checkpoint runs/quickstart/checkpoints/train_best.safetensors --out report.json
  weakground eval --method center --data flickr30k_entities:/data/flickr30k --split test --out center.json
  weakground locate digits.png 3 7 --checkpoint runs/quickstart/checkpoints/train_best.safetensors
  weakground locate photo.jpg "the cat" "a red shirt" --out overlay.png   # zero-training `bridge`, no checkpoint
  weakground locate --folder photos/ --phrases phrases.txt --out overlays/
  weakground locate --demo astronaut "the astronaut" "the flag" --out locate.png   # a bundled real photo
  weakground serve --port 8000                        # web page + JSON API at http://127.0.0.1:8000
  weakground train --preset multilevel_cpu                                 # caption-level training on scenes
  weakground retrieve --checkpoint runs/multilevel_cpu/checkpoints/train_best.safetensors --folder photos/ --text "a red circle"
"""


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weakground", description="Weakly supervised visual grounding: learn where a phrase is in an image "
        "from image-level text alone, then turn a phrase into a heatmap, a point and boxes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from weakground import __version__

    parser.add_argument("--version", action="version", version=f"weakground {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a method from a preset, evaluate it, write a report and a figure",
                       description="Train (backbone pretraining, then end-to-end), evaluate on the test split, and "
                       "write config.json, CSV logs, checkpoints, report.json and grounding.png to --out.")
    p.add_argument("--preset", default="quickstart", help="preset name (see `weakground presets`) or a YAML path "
                   "(default: quickstart)")
    _add_overrides(p)
    p.add_argument("--out", type=Path, help="run directory (default: runs/<preset name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a method: phrase grounding on a dataset (--data), or a multi-MNIST checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Two modes.\n\n"
        "Phrase grounding (--data FORMAT:PATH): read a split with the dataset readers, ask the method for a heatmap "
        "per phrase, and score the pointing game under the protocol flags below, with attention correctness, the "
        "centre and random baselines on the same queries, a per-type breakdown and, for methods with a joint "
        "image-text space, Recall@1/5/10 over the split's captions. Prints a table with the protocol line; --out "
        "writes the JSON report. A checkpoint's learned settings are fixed; --set eval.shift_average=N (heatmaps "
        "averaged over N x N shifted copies; 1: one pass) and --set data.eval_resize=true|false change how it "
        "reads images.\n\n"
        "Multi-MNIST (--checkpoint only, no --data): rebuild the test split from the checkpoint's data settings "
        "(overridable with --set data.KEY=VALUE) and score boxes from the method's heatmaps against the digits' "
        "ink boxes, or with --set eval.ground_truth=patch against the 28x28 patches they were pasted into; the "
        "box threshold is the one chosen on validation at training (against ink boxes), --set eval.box_threshold=F "
        "replaces it.",
        epilog="examples:\n"
        "  weakground eval --method center --data flickr30k_entities:/data/flickr30k --split test --out center.json\n"
        "  weakground eval --method center --data coco:/data/coco --split val2014 --tolerance 15 --min-area 0.05\n"
        "  weakground eval --checkpoint runs/quickstart/checkpoints/train_best.safetensors --out report.json")
    p.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint written by train (learned methods)")
    p.add_argument("--method", help="registered method name, e.g. center (a fixed baseline that needs no "
                   "checkpoint); with --checkpoint it must name the checkpoint's method")
    p.add_argument("--data", metavar="FORMAT:PATH", help="dataset to score phrase grounding on; FORMAT is one of "
                   "flickr30k_entities, coco, referit, visual_genome")
    _add_overrides(p)
    p.add_argument("--split", default="test", help="split to score: test (default), val, train, test_unseen "
                   "(synthetic scenes), a COCO split such as val2014, or all; multi-MNIST takes val or test")
    p.add_argument("--max-images", type=int, help="score only the first N images of the split")
    p.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("locate", help="point phrases at a photo (zero-training `bridge` by default, or a checkpoint)",
                       description="Ground each phrase in an image: a heatmap overlay with the peak point and boxes "
                       "per phrase. Without --checkpoint the zero-training method `bridge` (pretrained ImageNet and "
                       "MiniLM models, no download) is used; a checkpoint brings its own method.")
    p.add_argument("image", nargs="?", type=Path, help="image file (PNG, JPEG, ...); omit with --folder")
    p.add_argument("phrases", nargs="*", help="phrases to ground, e.g. \"the cat\" \"a red shirt\"")
    p.add_argument("--method", help="a method that needs no training (default: bridge), or the checkpoint's own")
    p.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint written by train")
    p.add_argument("--folder", type=Path, help="ground the phrases in every image of this folder (batch mode)")
    p.add_argument("--demo", metavar="NAME", help="use a bundled real photo instead of a file (astronaut, chelsea, "
                   "coffee, rocket, motorcycle, china, flower, grace_hopper, camera); every argument is a phrase")
    p.add_argument("--phrases", dest="phrase_file", type=Path, help="a UTF-8 file with one phrase a line")
    p.add_argument("--out", type=Path, help="overlay figure (default: overlay.png), or with --folder the "
                   "folder for one overlay per image (default: overlays/)")
    p.add_argument("--threshold", type=float, help="box threshold as a fraction of the peak (default: the "
                   "checkpoint's, else 0.5)")
    p.add_argument("--json", action="store_true", help="print points and boxes as JSON")
    p.set_defaults(func=cmd_locate)

    _add_serve_parser(sub)

    p = sub.add_parser("data", help="dataset tools: validate a dataset on disk",
                       description="Validate a grounding dataset in its real layout and report problems with file "
                       "and line. Formats: flickr30k_entities, coco, referit, visual_genome.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("check", help="read FORMAT:PATH and report counts and problems")
    q.add_argument("spec", help="FORMAT:PATH, e.g. flickr30k_entities:/data/flickr30k")
    q.add_argument("--split", default="all", help="split to read (default: all)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=cmd_data_check)
    q = data_sub.add_parser("make", help="write a synthetic dataset (scenes) in Flickr30K Entities + COCO layout")
    q.add_argument("name", choices=["scenes"], help="which synthetic dataset")
    q.add_argument("out", type=Path, help="output folder")
    q.add_argument("--n-train", type=int, default=2000)
    q.add_argument("--n-val", type=int, default=200)
    q.add_argument("--n-test", type=int, default=500)
    q.add_argument("--n-test-unseen", type=int, default=500, help="images of held-out colour-category pairs")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_make)

    p = sub.add_parser("retrieve", help="search a folder of images by text, or rank captions for an image",
                       description="Cross-modal retrieval with a trained joint-space method (multilevel, dsve_loc, "
                       "matchmap, mcb_attention with captions). Text -> image: embed the images of --folder (or "
                       "load a --gallery saved earlier) and list the top -k images per --text. Image -> text: "
                       "rank the lines of --captions for --image. Galleries of 20,000 images or more are "
                       "searched through a FAISS HNSW index, smaller ones exactly; the top --rerank candidates "
                       "are re-scored with the method's exact score.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a caption method's .safetensors checkpoint")
    p.add_argument("--folder", type=Path, help="folder of images to search (text -> image)")
    p.add_argument("--gallery", type=Path, help="a gallery file written by --save-gallery (instead of --folder)")
    p.add_argument("--save-gallery", type=Path, help="write the embedded --folder here for later searches")
    p.add_argument("--text", action="append", default=[], help="a text query (repeatable)")
    p.add_argument("--image", type=Path, help="an image to describe (image -> text), with --captions")
    p.add_argument("--captions", type=Path, help="UTF-8 file of candidate captions, one a line")
    p.add_argument("-k", type=int, default=5, help="results per query (default: 5)")
    p.add_argument("--rerank", type=int, default=50, help="re-score this many first-stage candidates with the "
                   "method's exact score (0: off; default: 50)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("presets", help="list the bundled presets")
    p.set_defaults(func=cmd_presets)
    return parser


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")


def _summary_rows(test: dict) -> list[tuple[str, str]]:
    rows = [(k, f"{test[k]:.2f}") for k in test if k.startswith("ap") and k[2:].isdigit()]
    rows += [("map (mean over thresholds)", f"{test['map']:.2f}"), ("avg_iou", f"{test['avg_iou']:.2f}"),
             ("pointing_accuracy", f"{test['pointing_accuracy']:.3f}"), ("absent_auroc", f"{test['absent_auroc']:.3f}"),
             ("queries", str(test["n_queries"]))]
    return rows


def cmd_train(args: argparse.Namespace) -> int:
    from weakground.config import load_config
    from weakground.engine.pipeline import run_experiment

    config = load_config(args.preset, args.overrides)
    out = args.out or Path("runs") / config.name
    report = run_experiment(config, out, resume=args.resume, progress=not args.no_progress)
    if config.data.name != "multimnist":  # caption methods print their per-split lines as they are scored
        print(f"\n{config.name}: {config.method.name} on {config.data.name}; report: {out / 'report.json'}")
        print(f"checkpoint: {report['train']['checkpoint']}")
        return 0
    layout = f"{config.data.grid}x{config.data.grid} grid" if config.data.layout == "grid" else "free layout"
    print(f"\n{config.name}: {config.method.name} on {config.data.name} ({layout}), test split")
    _print_table(_summary_rows(report["test"]))
    print(f"report: {out / 'report.json'}")
    if "figure" in report:
        print(f"figure: {report['figure']}")
    print(f"checkpoint: {report['train']['checkpoint']}")
    return 0


_PHRASE_ONLY = ("tolerance", "union", "min_area", "grid_argmax", "strict", "visualize")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _eval_phrases(args)
    if args.method is not None:
        raise WeakgroundError("eval --method needs --data FORMAT:PATH (without --data, eval scores a multi-MNIST "
                              "--checkpoint)")
    if args.checkpoint is None:
        raise WeakgroundError("eval needs --data FORMAT:PATH with --method and/or --checkpoint, or a multi-MNIST "
                              "--checkpoint")
    given = [f"--{name.replace('_', '-')}" for name in _PHRASE_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise WeakgroundError(f"eval {given[0]} applies to phrase grounding: add --data FORMAT:PATH")
    return _eval_multimnist(args)


def _eval_multimnist(args: argparse.Namespace) -> int:
    from weakground.config import DataConfig, EvalConfig, from_dict, parse_override, to_dict
    from weakground.data.splits import build_splits
    from weakground.engine.checkpoint import atomic_write_text
    from weakground.engine.evaluate import evaluate_label_grounding
    from weakground.engine.pipeline import load_grounder, machine_description
    from weakground.engine.trainer import resolve_device

    if args.split not in ("val", "test"):
        raise WeakgroundError(f"eval --split {args.split!r}: multi-MNIST checkpoints are scored on val or test")
    device = resolve_device("auto")
    model, config = load_grounder(args.checkpoint, device)
    data, scoring = to_dict(config.data), to_dict(config.eval)
    for text in args.overrides:
        keys, value = parse_override(text)
        if keys in (["eval", "ground_truth"], ["eval", "box_threshold"]):
            scoring[keys[1]] = value
        elif len(keys) == 2 and keys[0] == "data":
            data[keys[1]] = value
        else:
            raise WeakgroundError(f"eval --set {text!r}: only data.KEY=VALUE, eval.ground_truth=ink|patch and "
                                  "eval.box_threshold=F apply to multi-MNIST evaluation")
    data_config = from_dict(DataConfig, data, "--set data")
    config = dataclasses.replace(config, data=data_config, eval=from_dict(EvalConfig, scoring, "--set eval"))
    split = build_splits(data_config, (args.split,))[args.split]
    report = evaluate_label_grounding(model, split, config.eval, device, args.max_images,
                                      progress=not args.no_progress)
    report.update({"checkpoint": str(args.checkpoint), "split": args.split, "data": to_dict(data_config),
                   "machine": machine_description()})
    _print_table(_summary_rows(report))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
        print(f"report: {args.out}")
    return 0


# How a checkpoint reads images, as opposed to what it learned: the only settings `eval --set` may change.
INFERENCE_KEYS = (("data", "eval_resize"), ("eval", "shift_average"))


def _apply_inference_overrides(model: Grounder, config: Any, overrides: list[str]) -> None:
    """``--set data.eval_resize=...`` / ``eval.shift_average=...`` on a loaded checkpoint; anything else is refused."""
    from weakground.config import from_dict, parse_override, to_dict
    from weakground.engine.pipeline import configure_inference

    if not overrides:
        return
    for text in overrides:
        keys, value = parse_override(text)
        if tuple(keys) not in INFERENCE_KEYS:
            allowed = ", ".join(".".join(k) for k in INFERENCE_KEYS)
            raise WeakgroundError(f"eval --set {text!r}: a checkpoint's settings are fixed except {allowed}")
        section = getattr(config, keys[0])
        # from_dict checks the value's type as a config file's would be checked
        changed = from_dict(type(section), {**to_dict(section), keys[1]: value}, f"eval --set {keys[0]}")
        config = dataclasses.replace(config, **{keys[0]: changed})
    configure_inference(model, config)


def _phrase_method(args: argparse.Namespace, device: torch.device) -> Grounder:
    """The Grounder to score: from --checkpoint (checked against --method), or a fixed method built by name."""
    from weakground.config import BackboneConfig, parse_override
    from weakground.methods import create_method
    from weakground.registry import METHODS

    if args.checkpoint is not None:
        from weakground.engine.pipeline import load_grounder

        model, config = load_grounder(args.checkpoint, device)
        if args.method is not None and args.method != config.method.name:
            raise WeakgroundError(f"{args.checkpoint}: checkpoint holds method {config.method.name!r}, not "
                                  f"--method {args.method!r}")
        _apply_inference_overrides(model, config, args.overrides)
        return model
    if args.method is None:
        raise WeakgroundError("eval --data needs --method NAME or --checkpoint PATH")
    cls = METHODS.get(args.method)  # unknown name: one line listing the registered methods
    if cls.trainable:
        raise WeakgroundError(f"eval --method {args.method!r} is a learned method: give its --checkpoint")
    params = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        if len(keys) != 3 or keys[:2] != ["method", "params"]:
            raise WeakgroundError(f"eval --set {text!r}: only method.params.KEY=VALUE applies to --method "
                                  f"{args.method}")
        params[keys[2]] = value
    # A fixed method reads the files' own RGB; a checkpoint fixes its channel count instead.
    return create_method(args.method, BackboneConfig(in_channels=3), [], params)


def _eval_phrases(args: argparse.Namespace) -> int:
    from weakground.engine.checkpoint import atomic_write_text
    from weakground.engine.phrase_eval import evaluate_phrase_grounding, format_phrase_report
    from weakground.engine.pipeline import machine_description
    from weakground.engine.trainer import resolve_device
    from weakground.metrics import PointingProtocol

    if args.max_images is not None and args.max_images < 1:
        raise WeakgroundError(f"eval --max-images {args.max_images}: must be >= 1")
    if args.n_visualize < 0:
        raise WeakgroundError(f"eval --n-visualize {args.n_visualize}: must be >= 0")
    try:
        protocol = PointingProtocol(tolerance=0.0 if args.tolerance is None else args.tolerance,
                                    box_rule="union" if args.union else "any",
                                    min_area=0.0 if args.min_area is None else args.min_area,
                                    argmax_on="grid" if args.grid_argmax else "image")
    except ValueError as exc:
        raise WeakgroundError(f"eval protocol: {exc}") from None
    device = resolve_device("auto")
    model = _phrase_method(args, device)
    report = evaluate_phrase_grounding(model, args.data, args.split, protocol, strict=args.strict,
                                       max_images=args.max_images, device=device, progress=not args.no_progress,
                                       visualize_dir=args.visualize, n_visualize=args.n_visualize)
    report.update({"checkpoint": None if args.checkpoint is None else str(args.checkpoint),
                   "machine": machine_description()})
    print(format_phrase_report(report))
    if args.visualize is not None:
        print(f"overlays: {len(report['visualizations'])} in {args.visualize}")
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
        print(f"report: {args.out}")
    return 0


MAX_PHRASE_CHARS = 1000  # a longer "phrase" is almost surely a pasted document; refuse it rather than guess
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _locate_phrases(args: argparse.Namespace) -> list[str]:
    phrases = list(args.phrases)
    if (args.folder is not None or args.demo is not None) and args.image is not None:
        phrases.insert(0, str(args.image))  # with --folder or --demo every positional argument is a phrase
    if args.phrase_file is not None:
        try:
            text = args.phrase_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WeakgroundError(f"{args.phrase_file}: cannot read the phrase file ({exc})") from None
        phrases += [line.strip() for line in text.splitlines() if line.strip()]
    if not phrases:
        raise WeakgroundError("no phrase to ground: give phrases after the image, or --phrases FILE")
    for i, phrase in enumerate(phrases, 1):
        if not phrase.strip():
            raise WeakgroundError(f"phrase {i} is empty")
        if len(phrase) > MAX_PHRASE_CHARS:
            raise WeakgroundError(f"phrase {i} is {len(phrase):,} characters long; the limit is {MAX_PHRASE_CHARS:,}")
    return [p.strip() for p in phrases]


def _locate_model(args: argparse.Namespace) -> tuple[object, float, int]:
    """The method to run, its box threshold and the image channels it reads."""
    from weakground.config import BackboneConfig, EvalConfig
    from weakground.methods import create_method
    from weakground.registry import METHODS

    if args.checkpoint is not None:
        from weakground.engine.pipeline import load_grounder

        model, config = load_grounder(args.checkpoint)
        if args.method is not None and args.method != config.method.name:
            raise WeakgroundError(f"--method {args.method!r} differs from the checkpoint's method "
                                  f"{config.method.name!r}; drop --method")
        return model, config.eval.box_threshold, model.backbone_config.in_channels
    name = args.method or "bridge"
    cls = METHODS.get(name)
    if cls.trainable:
        raise WeakgroundError(f"method {name!r} must be trained first: pass --checkpoint (methods that need no "
                              f"training: {', '.join(n for n in METHODS.names() if not METHODS.get(n).trainable)})")
    model = create_method(name, BackboneConfig(in_channels=3), [], {})
    return model.eval(), EvalConfig().box_threshold, 3


def _locate_one(model: object, path: Path, phrases: list[str], threshold: float, channels: int,
                out: Path) -> dict:
    import torch

    from weakground.io import image_to_tensor, read_image
    from weakground.metrics import heatmap_to_boxes, resize_heatmap
    from weakground.viz import overlay_figure

    image = read_image(path, channels=channels)
    with torch.no_grad():
        maps = resize_heatmap(model.grounding_maps(image_to_tensor(image), phrases), tuple(image.shape[:2]))[0]
    results, heatmaps, boxes, points = [], [], [], []
    for phrase, hm in zip(phrases, maps):
        det, scores = heatmap_to_boxes(hm, threshold)
        y, x = divmod(int(hm.argmax()), hm.shape[1])
        results.append({"phrase": phrase, "point": [x, y], "peak": float(hm.max()),
                        "boxes": [[float(v) for v in b] for b in det], "box_scores": [float(s) for s in scores]})
        heatmaps.append(hm.numpy())
        boxes.append(det.tolist())
        points.append((x, y))
    overlay_figure(image, heatmaps, phrases, boxes, points, out)
    return {"image": str(path), "results": results, "overlay": str(out)}


def _print_located(report: dict) -> None:
    print(f"{report['image']}:")
    for r in report["results"]:
        print(f"  {r['phrase']!r}: point {tuple(r['point'])}, peak {r['peak']:.3f}, {len(r['boxes'])} box(es)")
    print(f"  overlay: {report['overlay']}")


def cmd_locate(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise WeakgroundError(f"--threshold {args.threshold}: must lie in [0, 1] (a fraction of the map's peak)")
    if args.demo is not None:
        from weakground.data.demo_photos import demo_photo_path

        if args.folder is not None:
            raise WeakgroundError("give --demo NAME or --folder DIR, not both")
        args.phrases, args.image = _locate_phrases(args), demo_photo_path(args.demo)
        args.demo = args.phrase_file = None
    if args.folder is None and args.image is None:
        raise WeakgroundError("give an image file, --demo NAME, or --folder DIR")
    if args.folder is not None and not args.folder.is_dir():
        raise WeakgroundError(f"{args.folder}: not a folder")
    phrases = _locate_phrases(args)
    model, threshold, channels = _locate_model(args)
    threshold = threshold if args.threshold is None else args.threshold
    if args.folder is None:
        report = _locate_one(model, args.image, phrases, threshold, channels, args.out or Path("overlay.png"))
        if args.json:
            print(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            _print_located(report)
        return 0
    images = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise WeakgroundError(f"{args.folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out_dir = args.out or Path("overlays")
    reports, failures = [], 0
    for path in images:
        try:
            report = _locate_one(model, path, phrases, threshold, channels, out_dir / f"{path.stem}.png")
        except WeakgroundError as exc:
            # One bad file must not lose the others' results: report it, go on, and exit 2 at the end.
            failures += 1
            print(f"weakground: error: {exc}", file=sys.stderr)
            continue
        reports.append(report)
        if not args.json:
            _print_located(report)
    if args.json:
        print(json.dumps({"folder": str(args.folder), "images": reports, "failed": failures}, indent=2,
                         ensure_ascii=False))
    return 2 if failures else 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web app and JSON API: upload a photo, type phrases, see heatmaps, points, "
                       "boxes", description="Serve a page and a JSON API (POST /api/locate, GET /api/health, "
                       "GET /api/methods; typed schema at /openapi.json) that ground phrases in an "
                       "uploaded photo with the same model as `locate`. The model loads once at startup; requests "
                       "run one at a time through it. Needs the `serve` extra: pip install 'weakground[serve]'.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--method", help="a method that needs no training (default: bridge), or the checkpoint's own")
    p.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint written by train")
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                   help="largest image upload accepted, in MiB; larger ones get 413 (default: 10)")
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                   help="per-request limit on decoding + inference; past it the answer is 504 (default: 30)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise WeakgroundError(f"--port {args.port}: must lie in 0..65535")
    if not args.max_upload_mb > 0:
        raise WeakgroundError(f"--max-upload-mb {args.max_upload_mb:g}: must be > 0")
    if not args.timeout_s > 0:
        raise WeakgroundError(f"--timeout-s {args.timeout_s:g}: must be > 0")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise WeakgroundError(f"{args.checkpoint}: checkpoint file not found")
    import importlib
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise WeakgroundError(f"weakground serve needs the web extra ({', '.join(missing)} missing): "
                              "pip install 'weakground[serve]'")
    if args.checkpoint is None:  # a wrong name or a learned method fails here, in one line, not in the server log
        from weakground.registry import METHODS

        importlib.import_module("weakground.methods")  # registers the methods

        name = args.method or "bridge"
        if METHODS.get(name).trainable:
            raise WeakgroundError(f"method {name!r} must be trained first: pass --checkpoint")
    from weakground.serve.app import ServeSettings, serve

    settings = ServeSettings(method=args.method, checkpoint=args.checkpoint, timeout_s=args.timeout_s,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    try:
        serve(settings, host=args.host, port=args.port)
    except SystemExit as exc:  # uvicorn exits when it cannot bind the port or the model fails to load
        if exc.code not in (0, None):
            raise WeakgroundError(f"the server did not start on {args.host}:{args.port} (see the log above)") from None
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from weakground.data.readers import check_dataset, format_check_report

    report = check_dataset(args.spec, args.split)
    print(json.dumps(report, indent=2) if args.json else format_check_report(report))
    return 0


def cmd_data_make(args: argparse.Namespace) -> int:
    from weakground.data.scenes import SceneSpec, write_scenes

    summary = write_scenes(args.out, SceneSpec(seed=args.seed), args.n_train, args.n_val, args.n_test,
                           args.n_test_unseen)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _retrieve_model(args: argparse.Namespace) -> object:
    from weakground.engine.pipeline import load_grounder

    model, config = load_grounder(args.checkpoint)
    if not getattr(model, "has_joint_space", False):
        raise WeakgroundError(f"{args.checkpoint}: method {config.method.name!r} has no joint image-text space; "
                              f"retrieval needs a caption method's checkpoint")
    return model


def cmd_retrieve(args: argparse.Namespace) -> int:
    from weakground.engine import retrieval

    if args.k < 1 or args.rerank < 0:
        raise WeakgroundError(f"-k must be >= 1 and --rerank >= 0 (got -k {args.k}, --rerank {args.rerank})")
    if args.text and (args.folder is None) == (args.gallery is None):
        raise WeakgroundError("text search needs exactly one of --folder DIR or --gallery FILE")
    if (args.image is None) != (args.captions is None):
        raise WeakgroundError("image -> text needs both --image IMG and --captions FILE")
    if not args.text and args.image is None and args.save_gallery is None:
        raise WeakgroundError("nothing to do: give --text QUERY, --image IMG --captions FILE, or --save-gallery")
    if args.save_gallery is not None and args.folder is None:
        raise WeakgroundError("--save-gallery needs --folder DIR to embed")
    for i, text in enumerate(args.text, 1):
        if not text.strip() or len(text) > MAX_PHRASE_CHARS:
            raise WeakgroundError(f"--text {i} is empty or longer than {MAX_PHRASE_CHARS:,} characters")
    model = _retrieve_model(args)
    out: dict = {"checkpoint": str(args.checkpoint)}
    if args.folder is not None or args.gallery is not None:
        if args.folder is not None:
            if not args.folder.is_dir():
                raise WeakgroundError(f"{args.folder}: not a folder")
            paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            gallery, skipped = retrieval.build_gallery(model, paths, str(args.checkpoint), not args.no_progress)
            for line in skipped:
                print(f"skipped {line}", file=sys.stderr)
            if args.save_gallery is not None:
                retrieval.save_gallery(gallery, args.save_gallery)
                print(f"gallery: {len(gallery.paths)} images -> {args.save_gallery}", file=sys.stderr)
        else:
            gallery = retrieval.load_gallery(args.gallery)
            if gallery.method and gallery.method != model.name:
                raise WeakgroundError(f"{args.gallery}: embedded by method {gallery.method!r}, but the checkpoint "
                                      f"is {model.name!r}")
        if args.text:
            hits = retrieval.search_text(model, gallery, args.text, args.k, args.rerank)
            out["text_to_image"] = [{"text": t, "images": h} for t, h in zip(args.text, hits)]
    if args.image is not None:
        from weakground.io import image_to_tensor, read_image

        try:
            lines = args.captions.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise WeakgroundError(f"{args.captions}: cannot read the captions file ({exc})") from None
        captions = [line.strip() for line in lines if line.strip()]
        if not captions:
            raise WeakgroundError(f"{args.captions}: no caption in the file")
        image = image_to_tensor(read_image(args.image, channels=int(model.backbone_config.in_channels)))
        out["image_to_text"] = {"image": str(args.image),
                                "captions": retrieval.rank_captions(model, image, captions, args.k)}
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for query in out.get("text_to_image", []):
        print(f"{query['text']!r}:")
        for hit in query["images"]:
            print(f"  {hit['rank']:>3}. {hit['score']:+.4f}  {hit['path']}")
    if "image_to_text" in out:
        print(f"{out['image_to_text']['image']}:")
        for hit in out["image_to_text"]["captions"]:
            print(f"  {hit['rank']:>3}. {hit['score']:+.4f}  {hit['caption']}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from weakground.config import PRESET_DIR, preset_names

    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:14s} {first}")
    return 0


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


if __name__ == "__main__":
    raise SystemExit(main())
