"""``weakground locate``: point phrases at a photo, a folder of photos, or a bundled demo photo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weakground.cli.common import add_overrides, image_files
from weakground.errors import WeakgroundError


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--out", type=Path, help="overlay figure (default: runs/locate/IMAGE_STEM.png), or with "
                   "--folder the folder for one overlay per image (default: runs/locate/)")
    p.add_argument("--boxes", choices=("instance", "threshold"), help="instance: one box per object, grown from "
                   "each peak of the map; threshold: the regions at or above --threshold x the peak (default: the "
                   "method's: instance for bridge, threshold for a checkpoint)")
    p.add_argument("--threshold", type=float, help="box threshold as a fraction of the peak, for threshold boxes "
                   "(default: the checkpoint's, else 0.5; giving it asks for threshold boxes)")
    add_overrides(p, "how the model reads images: with --checkpoint data.eval_resize=BOOL or eval.shift_average=N; "
                  "with a named method its method.params.KEY=VALUE (repeatable)")
    p.add_argument("--json", action="store_true", help="print points and boxes as JSON")
    p.set_defaults(func=run)


def gather_phrases(args: argparse.Namespace) -> list[str]:
    """The phrases from the command line and ``--phrases FILE``, checked like every other door's."""
    from weakground.engine.inputs import check_phrases

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
    return check_phrases(phrases)


def default_overlay(image: Path) -> Path:
    """Where an overlay goes without --out: under runs/, never over a file in the current folder."""
    return Path("runs") / "locate" / f"{image.stem}.png"


def locate_one(predictor: Any, path: Path, phrases: list[str], args: argparse.Namespace, out: Path) -> dict:
    """Ground ``phrases`` in the image at ``path`` (boxes as ``args.boxes``/``args.threshold`` ask) and draw the
    overlay to ``out``."""
    from weakground.io import read_image
    from weakground.viz import overlay_figure

    image = read_image(path, channels=predictor.channels)
    found = predictor.locate_array(image, phrases, args.threshold, args.boxes)
    overlay_figure(image, [g.heatmap for g in found], phrases, [[list(b) for b in g.boxes] for g in found],
                   [g.point for g in found], out)
    kind = predictor.box_rule(args.threshold, args.boxes).kind
    return {"image": str(path), "boxes": kind, "results": [g.to_dict() for g in found], "overlay": str(out)}


def print_located(report: dict) -> None:
    print(f"{report['image']}:")
    for r in report["results"]:
        verdict = "" if r.get("found") is None else (
            f", presence {r['presence']:.2f}" if r["found"] else f", NOT FOUND (presence {r['presence']:.2f})")
        print(f"  {r['phrase']!r}: point {tuple(r['point'])}, peak {r['peak']:.3f}, {len(r['boxes'])} "
              f"{report['boxes']} box(es){verdict}")
    print(f"  overlay: {report['overlay']}")


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[Path] | None]:
    """Everything locate reads, checked before any model loads: the phrases, and the folder's images."""
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise WeakgroundError(f"--threshold {args.threshold}: must lie in [0, 1] (a fraction of the map's peak)")
    if args.threshold is not None and args.boxes == "instance":
        raise WeakgroundError("--threshold applies to threshold boxes; instance boxes grow from each peak (drop "
                              "--threshold, or give --boxes threshold)")
    if args.demo is not None:
        from weakground.data.demo_photos import demo_photo_path

        if args.folder is not None:
            raise WeakgroundError("give --demo NAME or --folder DIR, not both")
        args.phrases, args.image = gather_phrases(args), demo_photo_path(args.demo)
        args.demo = args.phrase_file = None
    if args.folder is None and args.image is None:
        raise WeakgroundError("give an image file, --demo NAME, or --folder DIR")
    phrases = gather_phrases(args)
    if args.folder is None:
        if not Path(args.image).is_file():  # before a model loads for seconds only to find no image
            raise WeakgroundError(f"{args.image}: image file not found")
        return phrases, None
    from weakground.engine.inputs import IMAGE_SUFFIXES

    images = image_files(args.folder)
    if not images:
        raise WeakgroundError(f"{args.folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return phrases, images


def run(args: argparse.Namespace) -> int:
    phrases, images = _inputs(args)
    from weakground.engine.inference import load  # torch (1-2 s) only once the inputs are known to be good

    predictor = load(args.checkpoint if args.checkpoint is not None else (args.method or "bridge"),
                     method=args.method if args.checkpoint is not None else None, overrides=args.overrides)
    if images is None:
        report = locate_one(predictor, args.image, phrases, args, args.out or default_overlay(args.image))
        if args.json:
            print(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            print_located(report)
        return 0
    out_dir = args.out or Path("runs") / "locate"
    reports, failures = [], 0
    for path in images:
        try:
            report = locate_one(predictor, path, phrases, args, out_dir / f"{path.stem}.png")
        except WeakgroundError as exc:
            # One bad file must not lose the others' results: report it, go on, and exit 2 at the end.
            failures += 1
            print(f"weakground: error: {exc}", file=sys.stderr)
            continue
        reports.append(report)
        if not args.json:
            print_located(report)
    if args.json:
        print(json.dumps({"folder": str(args.folder), "images": reports, "failed": failures}, indent=2,
                         ensure_ascii=False))
    return 2 if failures else 0
