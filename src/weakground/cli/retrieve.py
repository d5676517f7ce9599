"""``weakground retrieve``: text -> image search over a folder or a saved gallery, image -> text ranking."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weakground.errors import WeakgroundError


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from weakground.engine.inference import MAX_PHRASE_CHARS

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


def _gallery(args: argparse.Namespace, predictor: Any) -> Any:
    """The images to search: --folder embedded now (and saved with --save-gallery), or a saved --gallery."""
    from weakground.cli.common import image_files
    from weakground.engine import retrieval

    if args.folder is None:
        gallery = retrieval.load_gallery(args.gallery)
        if gallery.method and gallery.method != predictor.name:
            raise WeakgroundError(f"{args.gallery}: embedded by method {gallery.method!r}, but the checkpoint "
                                  f"is {predictor.name!r}")
        return gallery
    gallery, skipped = retrieval.build_gallery(predictor.model, image_files(args.folder), str(args.checkpoint),
                                               not args.no_progress)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if args.save_gallery is not None:
        retrieval.save_gallery(gallery, args.save_gallery)
        print(f"gallery: {len(gallery.paths)} images -> {args.save_gallery}", file=sys.stderr)
    return gallery


def _captions(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WeakgroundError(f"{path}: cannot read the captions file ({exc})") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise WeakgroundError(f"{path}: no caption in the file")
    return captions


def _print(out: dict[str, Any]) -> None:
    for query in out.get("text_to_image", []):
        print(f"{query['text']!r}:")
        for hit in query["images"]:
            print(f"  {hit['rank']:>3}. {hit['score']:+.4f}  {hit['path']}")
    if "image_to_text" in out:
        print(f"{out['image_to_text']['image']}:")
        for hit in out["image_to_text"]["captions"]:
            print(f"  {hit['rank']:>3}. {hit['score']:+.4f}  {hit['caption']}")


def run(args: argparse.Namespace) -> int:
    from weakground.engine import retrieval
    from weakground.engine.inference import load

    _check(args)
    predictor = load(args.checkpoint, command="retrieve")
    predictor.require_joint_space()
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    if args.folder is not None or args.gallery is not None:
        gallery = _gallery(args, predictor)
        if args.text:
            hits = retrieval.search_text(predictor.model, gallery, args.text, args.k, args.rerank)
            out["text_to_image"] = [{"text": t, "images": h} for t, h in zip(args.text, hits)]
    if args.image is not None:
        captions = _captions(args.captions)
        out["image_to_text"] = {"image": str(args.image),
                                "captions": predictor.rank_captions(args.image, captions, args.k)}
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        _print(out)
    return 0
