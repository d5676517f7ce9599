"""Retrieval from each caption method's trained score, against the embedding approximation, and the pointing game
with phrases encoded alone or inside their caption (issue 31 item 5).

    PYTHONPATH=src python benchmarks/retrieval_trained.py [--methods multilevel matchmap] [--retrieval-images N]
        [--full-gallery METHOD ...] [--pointing-images M] [--timing-images K] [--out FILE.json]

For each method, the checkpoint ``runs/<method>_cpu/checkpoints/train_best.safetensors`` (``--runs``) on its own
data's ``test`` split (the scenes the checkpoint was trained with, ``weakground.data.sources.dataset_spec``):

* ``retrieval``: ``evaluate_phrase_grounding``'s Recall@1/5/10 both ways over the first ``--retrieval-images``
  test images (0: all; keyed by that count, ``"all"`` for the whole split, which ``--full-gallery`` adds for
  the methods it names) and all their captions, ranked by the method's exact ``scores`` of every image with every
  caption (``retrieval="score"``, ``weakground.engine.retrieval.TrainedScorer``) and, alongside, by the
  ``encode_image . encode_text`` dot product. Pointing is skipped there (``phrase`` maps are not needed), so the
  seconds are those of retrieval alone: caption features once, then each image's features and its score row.
* ``full_gallery_timing``: the trained score of ``--timing-images`` images against every caption of the whole
  test split, timed, giving seconds per image for the full 1,000 x 5,000 matrix.
* ``pointing``: the pointing game over the first ``--pointing-images`` test images under ``phrase_context``
  ``"phrase"`` (each phrase alone, the committed protocol) and ``"sentence"`` (inside its caption).

Writes (or updates: other methods' rows are kept) the JSON, each method's row with its command and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from weakground.engine.driver import machine_description

RESULTS = Path(__file__).parent / "results"
RECALL_KEYS = ("R@1", "R@5", "R@10", "median_rank", "n_queries")


def _recall(block: dict[str, Any]) -> dict[str, Any]:
    return {d: {k: block[d][k] for k in RECALL_KEYS} for d in ("text_to_image", "image_to_text")}


class _NoMaps:
    """A view of a model whose phrase maps are never asked: retrieval alone, timed without the pointing game."""

    def __init__(self, model: Any) -> None:
        self.__dict__["_model"] = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def grounding_maps(self, images: torch.Tensor, phrases: list[str], inference: Any = None) -> torch.Tensor:
        return images.new_zeros(images.shape[0], len(phrases), 4, 4)

    def presence_scores(self, images: torch.Tensor, phrases: list[str], maps: Any = None) -> torch.Tensor:
        return images.new_zeros(images.shape[0], len(phrases))

    def to(self, *args: Any) -> _NoMaps:
        self._model.to(*args)
        return self

    def eval(self) -> _NoMaps:
        self._model.eval()
        return self


def _retrieval(model: Any, spec: str, n_images: int | None) -> dict[str, Any]:
    from weakground.engine.phrase_eval import evaluate_phrase_grounding

    t0 = time.time()
    report = evaluate_phrase_grounding(_NoMaps(model), spec, "test", max_images=n_images, retrieval="score")
    return {"images": report["n_images"], "captions": report["recall"]["text_to_image"]["n_queries"],
            "score": _recall(report["recall"]), "embedding": _recall(report["recall_embedding"]),
            "seconds": round(time.time() - t0, 1)}


def _full_gallery_timing(model: Any, spec: str, n_images: int) -> dict[str, Any]:
    from weakground.data.readers import read_dataset
    from weakground.engine.phrase_eval import _load_image, _Skips
    from weakground.engine.retrieval import TrainedScorer

    records = read_dataset(spec, split="test").records
    texts = [c.text for r in records for c in r.captions if c.text.strip()]
    t0 = time.time()
    scorer = TrainedScorer(model, texts)
    text_seconds = time.time() - t0
    images = [_load_image(r, 3, True, _Skips()) for r in records[:n_images]]
    t0 = time.time()
    for image in images:
        scorer.rows(image)
    per_image = (time.time() - t0) / max(1, len(images))
    return {"gallery_images": len(records), "captions": len(texts), "timed_images": len(images),
            "caption_features_seconds": round(text_seconds, 1), "seconds_per_image": round(per_image, 3),
            "full_matrix_seconds_estimate": round(text_seconds + per_image * len(records), 1)}


def _pointing(model: Any, spec: str, n_images: int | None) -> dict[str, Any]:
    from weakground.engine.phrase_eval import evaluate_phrase_grounding

    out = {}
    for context in ("phrase", "sentence"):
        t0 = time.time()
        r = evaluate_phrase_grounding(model, spec, "test", max_images=n_images, phrase_context=context)
        out[context] = {"pointing_accuracy": r["pointing_accuracy"], "attention_correctness":
                        r["attention_correctness"], "n_queries": r["n_queries"], "n_images": r["n_images"],
                        "seconds": round(time.time() - t0, 1)}
    return out


def run_method(method: str, runs: Path, args: argparse.Namespace) -> dict[str, Any]:
    from weakground.data.sources import dataset_spec
    from weakground.engine.inference import load

    checkpoint = runs / f"{method}_cpu" / "checkpoints" / "train_best.safetensors"
    predictor = load(checkpoint, command="eval")
    spec = dataset_spec(predictor.config.data)
    row: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": spec, "split": "test",
                           "shift_average": predictor.model.shift_average}
    sizes = [args.retrieval_images] + ([0] if method in args.full_gallery and args.retrieval_images else [])
    with torch.no_grad():
        row["retrieval"] = {str(n or "all"): _retrieval(predictor.model, spec, n or None) for n in sizes}
        print(method, "retrieval", json.dumps(row["retrieval"]), flush=True)
        if args.timing_images:
            row["full_gallery_timing"] = _full_gallery_timing(predictor.model, spec, args.timing_images)
            print(method, "timing", json.dumps(row["full_gallery_timing"]), flush=True)
        if args.pointing_images:
            row["pointing"] = _pointing(predictor.model, spec, args.pointing_images)
            print(method, "pointing", json.dumps(row["pointing"]), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["multilevel", "matchmap"])
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--retrieval-images", type=int, default=0, help="first N test images for Recall@K (0: all)")
    p.add_argument("--full-gallery", nargs="*", default=[], metavar="METHOD",
                   help="methods also scored on the whole test split (with --retrieval-images N)")
    p.add_argument("--timing-images", type=int, default=20, help="images timed against the full gallery (0: none)")
    p.add_argument("--pointing-images", type=int, default=200, help="first M test images for pointing (0: none)")
    p.add_argument("--out", type=Path, default=RESULTS / "retrieval_trained.json")
    args = p.parse_args(argv)
    command = "python benchmarks/retrieval_trained.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # Rows of methods not run this time are kept: each row names the command and machine that produced it.
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"methods": {}}
    for key in ("command", "machine"):  # a file written with one command for all its rows: give each row its own
        shared = result.pop(key, None)
        for row in result["methods"].values():
            row.setdefault(key, shared)
    for method in args.methods:
        row = run_method(method, args.runs, args)
        result["methods"][method] = {"command": command, "machine": machine_description(), **row}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each method: a partial run keeps its rows
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
