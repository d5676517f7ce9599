"""``weakground caption``: write a caption for a photo with a trained captioner and ground each object word."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weakground.errors import WeakgroundError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="write a grounded caption for an image with a trained captioner",
                       description="Caption an image with a trained captioner (ss_attention, the spatial-semantic "
                       "attention of Hu et al., or its Up-Down baseline) and give each object word it writes a box: "
                       "the region it attended most while writing the word. Train one first: "
                       "`weakground train --preset ss_attention_cpu`.")
    p.add_argument("image", type=Path, help="image file (PNG, JPEG, ...)")
    p.add_argument("--checkpoint", type=Path, help="a captioner's .safetensors checkpoint written by train")
    p.add_argument("--beam", type=int, help="beam width (default: the checkpoint's, 3 in the presets; 1: greedy)")
    p.add_argument("--out", type=Path, help="also draw the image with each object word's box into this PNG")
    p.add_argument("--json", action="store_true", help="print the caption and the boxes as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is None:
        raise WeakgroundError("caption needs a captioner's --checkpoint (train one: weakground train --preset "
                              "ss_attention_cpu)")
    if not args.image.is_file():
        raise WeakgroundError(f"{args.image}: image file not found")
    if args.beam is not None and args.beam < 1:
        raise WeakgroundError(f"--beam {args.beam}: must be >= 1 (1: greedy)")
    from weakground.engine.inference import load_captioner

    result = load_captioner(args.checkpoint).caption(args.image, args.beam)
    report = {"image": str(args.image), **result.to_dict()}
    if args.out is not None:
        from weakground.io import read_image
        from weakground.viz import caption_figure

        caption_figure(read_image(args.image, channels=3), result.objects, result.caption, args.out)
        report["overlay"] = str(args.out)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{args.image}: {result.caption}")
    for obj in result.objects:
        print(f"  {obj['word']!r} ({obj['class']}): box {[round(v, 1) for v in obj['box']]}")
    if args.out is not None:
        print(f"  overlay: {args.out}")
    return 0
