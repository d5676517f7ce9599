"""Regenerate seed 000's tables on multi-MNIST and write them to benchmarks/results/.

    python benchmarks/multimnist.py table2 --scale cpu          # 2x2 and 3x3: AP@0.3/0.4/0.5, mAP, avg IoU
    python benchmarks/multimnist.py table1 --scale cpu          # avg IoU for beta x {fine-tuned, from scratch}
    python benchmarks/multimnist.py table2 --scale cpu_erasing --grids 2   # cpu, maps pulled onto the ink
    python benchmarks/multimnist.py table2 --scale cpu_erasing --grids 3 --from-2x2 --set train.epochs=5
                                                                # 3x3 after 2x2: a curriculum
    python benchmarks/multimnist.py table2 --scale paper_scale  # the published setting, on a GPU
    python benchmarks/multimnist.py steptime --scale cpu        # seconds per training step, per MCB post-processing

Each run trains from nothing with the preset named by --scale (``weakground/configs/<scale>.yaml``) and
scores the test split, composed from digits never seen in training, twice: against each digit's tight ink box
(the main keys) and against the 28x28 patch it was pasted into, its grid cell (``patch_boxes``; seed 000 does
not say which box it scored, and the cell is the natural box of a grid scene), each with its box threshold
chosen on validation. Results are merged into
``benchmarks/results/multimnist.json`` / ``table1.json`` under the scale's key, with the command and machine, and
printed as a Markdown table beside the paper's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from weakground.config import load_config
from weakground.engine.driver import machine_description, run_experiment

RESULTS = Path(__file__).parent / "results"
# Seed 000 (Fang et al.), Tables 1 and 2, for the side-by-side rows.
PAPER_TABLE2 = {"3x3": {"ap30": 83.40, "ap40": 82.54, "ap50": 60.03, "map": 75.23},
                "2x2": {"ap30": 94.48, "ap40": 96.22, "ap50": 71.53, "map": 87.41}}
PAPER_TABLE1 = {"finetune": {"0": 59.74, "0.05": 60.84, "0.1": 67.07, "0.2": 36.37},
                "scratch": {"0": 57.90, "0.05": 63.39, "0.1": 66.40, "0.2": 41.02}}
METRICS = ("ap30", "ap40", "ap50", "map", "avg_iou", "pointing_accuracy", "absent_auroc")


def _merge(path: Path, scale: str, entry: dict) -> dict:
    """Merge ``entry`` into the file's ``scale`` block; called after every finished run, so a run that is cut off
    (a time limit on a lent GPU, say) keeps the rows it finished. Rows of earlier runs stay unless replaced; each
    row carries its own command and machine."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    block = data.setdefault(scale, {})
    for key, value in entry.items():
        if isinstance(value, dict) and isinstance(block.get(key), dict) and key == "rows":
            for scheme, rows in value.items():
                block[key].setdefault(scheme, {}).update(rows)
        else:
            block[key] = value
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return data


def _rounded(test: dict) -> dict:
    return {k: round(test[k], 2 if k in ("ap30", "ap40", "ap50", "map", "avg_iou") else 4) for k in METRICS}


def _rescore(checkpoint: Path, ground_truths: tuple[str, ...], progress: bool, grid: int | None = None) -> dict:
    """A trained model scored again on test, once per kind of box in ``ground_truths`` ("ink", "patch"), and, with
    ``grid``, on images of another grid size than it was trained on. Each kind gets its own box threshold, chosen
    again on validation images of that protocol (never on test). The model is loaded, and the splits built, once
    for all kinds. Returns {kind: row}."""
    from weakground.data.splits import build_splits
    from weakground.engine.evaluate import evaluate_label_grounding
    from weakground.engine.inference import load_checkpoint
    from weakground.engine.tasks.label_grounding import best_box_threshold
    from weakground.engine.trainer import resolve_device

    device = resolve_device("auto")
    model, config = load_checkpoint(checkpoint, device)
    if grid is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, grid=grid))
    splits = build_splits(config.data, ("val", "test"))
    rows = {}
    for ground_truth in ground_truths:
        scoring = dataclasses.replace(config.eval, ground_truth=ground_truth)
        if scoring.threshold_candidates:
            threshold = best_box_threshold(model, scoring, splits["val"], device)
            scoring = dataclasses.replace(scoring, box_threshold=threshold)
        test = evaluate_label_grounding(model, splits["test"], scoring, device, progress=progress)
        rows[ground_truth] = {**_rounded(test), "box_threshold": scoring.box_threshold,
                              "ground_truth_boxes": test["protocol"]["ground_truth_boxes"]}
    return rows


def _run(scale: str, overrides: list[str], run_dir: Path, progress: bool) -> dict:
    config = load_config(scale, overrides)
    t0 = time.time()
    report = run_experiment(config, run_dir, progress=progress, figure=False)
    test = report["test"]
    row = _rounded(test)
    row.update(n_test_images=test["n_images"], n_queries=test["n_queries"], train_seconds=round(time.time() - t0, 1),
               overrides=overrides, box_threshold=report["config"]["eval"]["box_threshold"],
               ground_truth_boxes=test["protocol"]["ground_truth_boxes"])
    if "pretrain" in report:
        row["pretrain_digit_accuracy"] = round(100 * report["pretrain"]["test_accuracy"], 2)
    row["patch_boxes"] = _rescore(Path(report["train"]["checkpoint"]), ("patch",), progress)["patch"]
    return row


def _checkpoint_2x2(args: argparse.Namespace) -> Path:
    """Where ``table2 --grids 2`` leaves this scale's 2x2 model, the start of ``--from-2x2``."""
    return Path(args.runs) / f"table2_{args.scale}_2x2" / "checkpoints" / "train_best.safetensors"


def table2(args: argparse.Namespace) -> None:
    entry = {"command": " ".join(["python", "benchmarks/multimnist.py"] + sys.argv[1:]), "machine": machine_description(),
             "preset": args.scale}
    source = _checkpoint_2x2(args)
    keys = []
    for grid in args.grids:
        key, overrides = f"{grid}x{grid}", [f"data.grid={grid}", *args.set]
        if args.from_2x2:  # a curriculum: the 2x2 model goes on training on this grid (train.init_from)
            key, overrides = key + "_from_2x2", [*overrides, f"train.init_from={source}"]
        keys.append(key)
        entry[key] = _run(args.scale, overrides, Path(args.runs) / f"table2_{args.scale}_{key}", not args.no_progress)
        entry[key].update(command=entry["command"], machine=entry["machine"])
        if args.from_2x2:  # the starting point: the 2x2 model on this grid's images before any training on them
            entry[key]["2x2_model_as_is"] = _rescore(source, ("ink", "patch"), not args.no_progress, grid)
        print(f"{key}: {entry[key]}")
        _merge(RESULTS / "multimnist.json", args.scale, entry)
    print("\n| grid | source | AP@0.3 | AP@0.4 | AP@0.5 | Avg mAP | avg IoU |\n|---|---|---|---|---|---|---|")
    for key in keys:
        grid, r = key.split("_")[0], entry[key]
        p = PAPER_TABLE2[grid]
        print(f"| {grid} | paper | {p['ap30']:.2f} | {p['ap40']:.2f} | {p['ap50']:.2f} | {p['map']:.2f} | — |")
        rows = [(f"ours ({args.scale}), ink boxes", r), (f"ours ({args.scale}), patch boxes", r["patch_boxes"])]
        if args.from_2x2:
            rows = [(f"ours ({args.scale}, 2x2 model as is), {gt} boxes", r["2x2_model_as_is"][gt])
                    for gt in ("ink", "patch")] + [(f"{label} after 2x2", q) for label, q in rows]
        for label, q in rows:
            print(f"| {grid} | {label} | {q['ap30']:.2f} | {q['ap40']:.2f} | {q['ap50']:.2f} | {q['map']:.2f} | "
                  f"{q['avg_iou']:.2f} |")


def table1(args: argparse.Namespace) -> None:
    entry = {"command": " ".join(["python", "benchmarks/multimnist.py"] + sys.argv[1:]), "machine": machine_description(),
             "preset": args.scale, "grid": "2x2", "rows": {}}
    schemes = {"finetune": ["pretrain.enabled=true", "train.backbone_lr_mult=0.1"],
               "scratch": ["pretrain.enabled=false", "train.backbone_lr_mult=1.0"]}
    for scheme, scheme_overrides in schemes.items():
        entry["rows"][scheme] = {}
        for beta in args.betas:
            overrides = [*scheme_overrides, f"method.params.beta={beta}", *args.set]
            row = _run(args.scale, overrides, Path(args.runs) / f"table1_{args.scale}_{scheme}_beta{beta}",
                       not args.no_progress)
            entry["rows"][scheme][f"{beta:g}"] = row
            print(f"{scheme} beta={beta:g}: avg IoU {row['avg_iou']:.2f}")
            _merge(RESULTS / "table1.json", args.scale, entry)
    betas = [f"{b:g}" for b in args.betas]
    print("\n| model | source | " + " | ".join(f"β={b}" for b in betas) + " |\n|---|---|" + "---|" * len(betas))
    for scheme, label in (("finetune", "Fine-tune backbone"), ("scratch", "Train from scratch")):
        print(f"| {label} | paper | " + " | ".join(f"{PAPER_TABLE1[scheme].get(b, float('nan')):.2f}" for b in betas) + " |")
        print(f"| {label} | ours ({args.scale}) | "
              + " | ".join(f"{entry['rows'][scheme][b]['avg_iou']:.2f}" for b in betas) + " |")


def steptime(args: argparse.Namespace) -> None:
    """Seconds per training step (forward + backward, no data loading) of the preset's model, for each
    ``mcb_post``: the signed square root forms every d-vector; ``l2`` folds the first 1x1 convolution into the
    sketch product (``CompactBilinearPooling.fused_linear``)."""
    import torch

    from weakground.data.splits import class_names
    from weakground.methods import create_method

    entry = {"command": " ".join(["python", "benchmarks/multimnist.py"] + sys.argv[1:]),
             "machine": machine_description(), "preset": args.scale, "seconds_per_step": {}}
    batch_size = load_config(args.scale, args.set).train.batch_size
    entry["batch_size"] = batch_size
    for post in ("signed_sqrt_l2", "l2"):
        config = load_config(args.scale, [f"method.params.mcb_post={post}", *args.set])
        torch.manual_seed(0)
        names = class_names(config.data)
        n_classes = len(names)
        model = create_method(config.method.name, config.backbone, names, config.method.params)
        params = config.method.params
        side = config.data.grid * 28  # multi-MNIST digits are 28 px
        batch = {"images": torch.rand(batch_size, 1, side, side),
                 "labels": torch.randint(n_classes, (batch_size, params.get("queries_per_image", 1))),
                 "absent": torch.randint(n_classes, (batch_size, max(1, params.get("absent_queries", 0))))}
        for _ in range(2):  # warm-up
            model.loss(batch)["total"].backward()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            model.loss(batch)["total"].backward()
            times.append(time.perf_counter() - t0)
        entry["seconds_per_step"][post] = round(float(statistics.median(times)), 3)
        print(f"mcb_post={post}: {entry['seconds_per_step'][post]:.3f} s per {batch_size}-image step")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mcb_steptime.json").write_text(json.dumps({args.scale: entry}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["table1", "table2", "steptime"])
    parser.add_argument("--scale", default="cpu", help="preset: cpu (2 CPU cores), cpu_erasing (cpu with maps "
                        "tightened onto the ink) or paper_scale (GPU)")
    parser.add_argument("--grids", type=int, nargs="+", default=[2, 3], help="table2: grid sizes")
    parser.add_argument("--from-2x2", action="store_true", help="table2: start each grid's model from this scale's "
                        "2x2 model (train it first with --grids 2) instead of backbone pretraining, a curriculum; "
                        "rows go under '3x3_from_2x2' with the 2x2 model's own score on those images beside them")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2], help="table1: beta values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--runs", default="runs/benchmarks", help="where run directories go")
    parser.add_argument("--steps", type=int, default=5, help="steptime: timed steps per setting")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.from_2x2:
        source = _checkpoint_2x2(args)
        if 2 in args.grids:
            parser.error("--from-2x2 trains larger grids from the 2x2 model: train that first with --grids 2")
        if not source.is_file():
            parser.error(f"{source}: no 2x2 model for --from-2x2 (run: table2 --scale {args.scale} --grids 2)")
    {"table1": table1, "table2": table2, "steptime": steptime}[args.table](args)


if __name__ == "__main__":
    main()
