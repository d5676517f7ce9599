"""Presence: does a method know when a phrase is not in the image? AUROC of its presence score, present phrases
against absent ones, and the calibrated "found" decision.

    PYTHONPATH=src python benchmarks/presence.py --method bridge
    PYTHONPATH=src python benchmarks/presence.py --method bridge --split heldout
    PYTHONPATH=src python benchmarks/presence.py --checkpoint RUN/checkpoints/train_best.safetensors

Present phrases: each image's own distinct phrase texts; absent: as many phrases of other images of the split,
seeded per image, whose head noun and text differ from all of the image's phrases (the protocol of ``weakground
eval``'s ``presence`` block). A checkpoint is calibrated (Platt scaling, :func:`weakground.metrics.fit_platt`) on
its validation split and scored on test. ``bridge`` is scored on the bundled real photos:
``--split tuning`` (default) the demo photos its defaults, and the calibration ``BridgeConfig`` carries, came from
(a tuning-set figure); ``--split heldout`` the held-out photos nothing was chosen on (entry ``bridge (heldout)``).
``found_accuracy``: the share of present phrases found and absent ones not
found, averaged over the two (balanced), at the calibration's threshold.

Writes (merges into) ``benchmarks/results/presence.json``, keyed by model, with command and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from weakground.data.demo_photos import SPLITS, materialize_demo, reader_split
from weakground.data.sources import dataset_spec
from weakground.engine.driver import machine_description
from weakground.engine.inference import load
from weakground.engine.phrase_eval import evaluate_phrase_grounding
from weakground.metrics import PresenceCalibration, fit_platt

RESULTS = Path(__file__).parent / "results"


def found_accuracy(calibration: PresenceCalibration, present: list[float], absent: list[float]) -> float:
    found = lambda scores: np.array([calibration.probability(s) >= calibration.threshold for s in scores])  # noqa: E731
    return float(0.5 * found(present).mean() + 0.5 * (1 - found(absent)).mean())


def _presence(model, spec: str, split: str, max_images: int | None, progress: bool) -> dict:
    report = evaluate_phrase_grounding(model, spec, split, max_images=max_images, presence_scores=True,
                                       progress=progress)
    return report["presence"]


def measure_checkpoint(predictor, max_images: int | None, progress: bool) -> dict:
    spec = dataset_spec(predictor.config.data, progress)
    val = _presence(predictor.model, spec, "val", max_images, progress)
    calibration = fit_platt(val["present_scores"], val["absent_scores"])
    test = _presence(predictor.model, spec, "test", max_images, progress)
    return {"dataset": spec, "calibrated_on": "val", "calibration": calibration.to_list(), "val_auroc": val["auroc"],
            "test_auroc": test["auroc"], "test_present": test["n_present"], "test_absent": test["n_absent"],
            "test_found_accuracy": found_accuracy(calibration, test["present_scores"], test["absent_scores"])}


DATASETS = {"tuning": "the bundled demo photos (the set bridge's defaults were tuned on)",
            "heldout": "the held-out photos (no default, rule or calibration was chosen on them)"}


def measure_bridge(predictor, progress: bool, split: str = "tuning") -> dict:
    spec = f"flickr30k_entities:{materialize_demo(split=split)}"
    demo = _presence(predictor.model, spec, reader_split(split), None, progress)
    fitted = fit_platt(demo["present_scores"], demo["absent_scores"])
    carried = predictor.calibration
    return {"split": split, "dataset": DATASETS[split], "auroc": demo["auroc"],
            "present": demo["n_present"], "absent": demo["n_absent"], "calibration_fitted_here": fitted.to_list(),
            "calibration_carried": carried.to_list() if carried else None,
            "found_accuracy": found_accuracy(carried or fitted, demo["present_scores"], demo["absent_scores"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--method", action="append", default=[], help="bridge")
    parser.add_argument("--split", choices=list(SPLITS), default="tuning", help="bridge's photos: tuning (its "
                        "defaults were chosen there) or heldout (nothing was)")
    parser.add_argument("--max-images", type=int, default=None, help="per split, for a quick look")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "presence.json")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.method:
        parser.error("name at least one --checkpoint or --method")
    if any(m != "bridge" for m in args.method):
        parser.error("--method: only bridge is scored by name (on the demo photos); give others as --checkpoint")
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    command = "python benchmarks/presence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for source in [*args.checkpoint, *args.method]:
        t0 = time.time()
        predictor = load(source)
        progress = not args.no_progress
        entry = (measure_bridge(predictor, progress, args.split) if predictor.config is None
                 else measure_checkpoint(predictor, args.max_images, progress))
        name = predictor.name if predictor.config is None else f"{predictor.name} ({predictor.config.name})"
        if predictor.config is None and args.split != "tuning":
            name += f" ({args.split})"  # the tuning entry keeps its old key
        data[name] = {**entry, "seconds": round(time.time() - t0, 1), "source": str(source), "command": command,
                      "machine": machine_description()}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in entry.items() if isinstance(v, float)), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
