"""Box accuracy on the scenes: the fixed-threshold boxes ``locate`` draws against one box per object (region
growing from each peak, :mod:`weakground.metrics.instances`), each rule's settings chosen on validation only.

    PYTHONPATH=src python benchmarks/instance_boxes.py --checkpoint RUN/checkpoints/train_best.safetensors
    PYTHONPATH=src python benchmarks/instance_boxes.py --method bridge        # on the demo photos, default rules
    PYTHONPATH=src python benchmarks/instance_boxes.py --method bridge --split heldout   # on the held-out photos

For each model: one pass over ``--val-images`` validation images scores every rule of the grid (threshold
``THRESHOLDS``; instance ``GROWS`` x ``MIN_PEAKS``); the best threshold rule and the best instance rule by
validation box accuracy (ties: the first in grid order) are then scored on the test split, next to the
``threshold@0.5`` default. Box accuracy: the rule's top box has IoU >= 0.5 with any ground-truth box of the
phrase, over the queries the pointing game scores (the protocol of ``weakground eval``). The scenes are the
checkpoint's own data (its config). A ``--method`` (``bridge``) is scored on the bundled demo photos, which have
no validation split: there only the default rules (``threshold@0.5``, ``instance`` at grow 0.3, min_peak 0.5) are
scored, once, and nothing is chosen (``--preset P`` scores it on P's scenes instead, with the grid);
``--split heldout`` scores it on the held-out photos no default was chosen on (entry ``bridge (heldout)``).

Writes (merges into) ``benchmarks/results/instance_boxes.json`` under each model's name, with command and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from weakground.config import load_config
from weakground.data.demo_photos import SPLITS, materialize_demo, reader_split
from weakground.data.sources import dataset_spec
from weakground.engine.driver import machine_description
from weakground.engine.inference import load
from weakground.engine.phrase_eval import DEFAULT_BOX_RULES, evaluate_phrase_grounding
from weakground.metrics import BoxRule

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
GROWS = (0.1, 0.2, 0.3, 0.4, 0.5)
MIN_PEAKS = (0.5, 0.7, 0.9)
DEFAULT = BoxRule("threshold", threshold=0.5)


def grid() -> list[BoxRule]:
    return ([BoxRule("threshold", threshold=t) for t in THRESHOLDS]
            + [BoxRule("instance", grow=g, min_peak=m) for g in GROWS for m in MIN_PEAKS])


def choose(val_accuracy: dict[str, float], rules: list[BoxRule], kind: str) -> BoxRule:
    """The rule of ``kind`` with the best validation accuracy (the first in grid order on ties)."""
    candidates = [r for r in rules if r.kind == kind]
    return max(candidates, key=lambda r: (val_accuracy[r.name], -candidates.index(r)))


def measure(model, spec: str, val_images: int, test_images: int | None, progress: bool) -> dict:
    rules = grid()
    t0 = time.time()
    val = evaluate_phrase_grounding(model, spec, "val", max_images=val_images, box_rules=rules, progress=progress)
    chosen = {kind: choose(val["box_accuracy"], rules, kind) for kind in ("threshold", "instance")}
    test_rules = list(dict.fromkeys([DEFAULT, chosen["threshold"], chosen["instance"]]))
    test = evaluate_phrase_grounding(model, spec, "test", max_images=test_images, box_rules=test_rules,
                                     progress=progress)
    return {"dataset": spec, "val_images": val["n_images"], "val_queries": val["n_evaluated"],
            "val_box_accuracy": val["box_accuracy"],
            "chosen_on_val": {kind: rule.name for kind, rule in chosen.items()},
            "test_images": test["n_images"], "test_queries": test["n_evaluated"],
            "test_box_accuracy": test["box_accuracy"], "test_pointing_accuracy": test["pointing_accuracy"],
            "seconds": round(time.time() - t0, 1)}


DEMO_DATASETS = {"tuning": "the bundled demo photos (no validation split: default rules, nothing chosen)",
                 "heldout": "the held-out photos (default rules; no default was chosen on them)"}


def measure_demo(model, progress: bool, split: str = "tuning") -> dict:
    spec = f"flickr30k_entities:{materialize_demo(split=split)}"
    test = evaluate_phrase_grounding(model, spec, reader_split(split), box_rules=DEFAULT_BOX_RULES,
                                     progress=progress)
    return {"split": split, "dataset": DEMO_DATASETS[split],
            "test_images": test["n_images"], "test_queries": test["n_evaluated"],
            "test_box_accuracy": test["box_accuracy"], "test_pointing_accuracy": test["pointing_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], help="a trained method (repeatable)")
    parser.add_argument("--method", action="append", default=[], help="a fixed method by name, e.g. bridge")
    parser.add_argument("--preset", default=None, help="score a --method on this preset's scenes (default: the "
                        "demo photos)")
    parser.add_argument("--split", choices=list(SPLITS), default="tuning", help="a --method's bundled photos: "
                        "tuning (the demo photos) or heldout")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "instance_boxes.json")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.method:
        parser.error("name at least one --checkpoint or --method")
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    command = "python benchmarks/instance_boxes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sources = [(str(c), c) for c in args.checkpoint] + [(m, m) for m in args.method]
    for label, source in sources:
        predictor = load(source)
        if predictor.config is None and args.preset is None:
            config, entry = None, measure_demo(predictor.model, not args.no_progress, args.split)
        else:
            config = predictor.config or load_config(args.preset)
            spec = dataset_spec(config.data, not args.no_progress)
            entry = measure(predictor.model, spec, args.val_images, args.test_images, not args.no_progress)
        name = predictor.model.name if config is None else f"{predictor.model.name} ({config.name})"
        if config is None and args.split != "tuning":
            name += f" ({args.split})"  # the tuning entry keeps its old key
        data[name] = {**entry, "source": label, "command": command, "machine": machine_description()}
        acc = entry["test_box_accuracy"]
        print(f"{name}: test box accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")  # after each model: a cut-off run keeps its rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
