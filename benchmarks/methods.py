"""Compare the caption-level methods on one dataset and protocol, and run seed 001's ablations.

    python benchmarks/methods.py table                       # every method's <method>_cpu preset on scenes
    python benchmarks/methods.py table --methods dsve_loc    # one row
    python benchmarks/methods.py table --scale gpu           # the <method>_gpu presets (a CUDA machine)
    python benchmarks/methods.py ablations                   # multilevel variants (seed 001's ablation table)
    python benchmarks/methods.py inference                   # inference settings, on the checkpoints `table` trained
    python benchmarks/methods.py show                        # print the tables from benchmarks/results/

Every row trains from nothing on the same cached synthetic scenes (sizes below, overriding the presets so all
methods see the same images) with caption-level supervision only, selects the checkpoint by pointing accuracy
on validation images, and scores the ``test`` split (seen colour-category pairs; 1,000 images, which are also the
retrieval gallery for Recall@K) and ``test_unseen`` (held-out pairs) with the default pointing protocol: argmax of
the bilinearly resized map, tolerance 0 px, any box of the phrase, no area filter, every phrase mention one query.
Results merge into ``benchmarks/results/methods.json`` (``ablations.json``) after every finished row, each row with
its command and machine.

``inference`` trains nothing: it reloads each method's best checkpoint from ``table``'s run directories and scores
the *validation* images under each inference setting that needs no retraining (images at their own size or
resized to the training square, ``data.eval_resize``; one pass or the average of 2x2 copies shifted by half the
feature stride, ``eval.shift_average``; the method's phrase-heatmap choices), so the presets' choices are made on
validation images, never on test (``benchmarks/results/inference.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from weakground.config import load_config
from weakground.engine.driver import machine_description, run_experiment

RESULTS = Path(__file__).parent / "results"
METHODS = ("multilevel", "dsve_loc", "matchmap", "mcb_attention")
PRESETS = {"mcb_attention": "mcb_attention_captions"}  # the method's caption-mode preset
# One dataset and budget for every row: 4,000 training images seen 6 times each (a few minutes per method on
# 2 CPU cores with frozen encoders), 200 for model selection, a 1,000-image test gallery, 500 images of held-out
# colour-category pairs.
DATA = ["data.name=scenes", "data.n_train=4000", "data.n_val=200", "data.n_test=1000", "data.n_test_unseen=500",
        "data.seed=0", "train.epochs=6"]
# Phrase-heatmap settings that need no retraining, per method (label -> method.params changes), for `inference`.
HEATMAP_SETTINGS = {
    "multilevel": {"word maps": {"heatmap": "words"}, "sentence map": {"heatmap": "sentence"}},
    "matchmap": {"mean of words": {"heatmap_words": "mean"}, "max-weighted words": {"heatmap_words": "max_weighted"}},
    "dsve_loc": {"relu floor": {"heatmap_floor": "relu"}, "min floor": {"heatmap_floor": "min"}},
    # the preset's word queries: a phrase's map mixes its words' maps by softmax(gamma s_w); a small gamma weighs
    # the words almost equally, a large one keeps the best-matching word's map
    "mcb_attention": {"word maps, gamma 5 (trained)": {}, "word maps, gamma 0.01": {"gamma_words": 0.01},
                      "word maps, gamma 100": {"gamma_words": 100.0}},
}
# eval.shift_average values `inference` tries by default: one pass, or n x n copies shifted by stride / n
SHIFT_AVERAGES = (1, 2, 3)
# seed 001's ablations as overrides of the multilevel preset (name -> settings); see docs of the method.
ABLATIONS = {  # slug -> (the label in docs/methods/multilevel.md, overrides)
    "full": ("full model", []),
    "level_middle": ("one level (middle)", ["method.params.levels=[middle]"]),
    "level_last": ("one level (last)", ["method.params.levels=[last]"]),
    "linear": ("linear mappings", ["method.params.nonlinear=false"]),
    "softmax": ("softmax attention", ["method.params.attention=softmax"]),
    "bilstm": ("trained BiLSTM text instead of MiniLM", ["method.params.text_encoder=bilstm"]),
}


def merge(path: Path, section: str, key: str, row: dict) -> None:
    """Write ``row`` under ``data[section][key]`` at once, so a run cut off later keeps the rows it finished."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(section, {})[key] = row
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _split_row(report: dict) -> dict:
    recall = report.get("recall") or {}
    return {"pointing_accuracy": round(report["pointing_accuracy"], 4),
            "attention_correctness": round(report["attention_correctness"], 4),
            "n_queries": report["n_queries"], "n_images": report["n_images"],
            "recall": {direction: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                       for direction, r in recall.items()}}


def run_row(preset: str, overrides: list[str], run_dir: Path, progress: bool) -> tuple[dict, dict]:
    """Train and score one preset; returns (its row, the test split's baselines)."""
    config = load_config(preset, overrides)
    t0 = time.time()
    report = run_experiment(config, run_dir, progress=progress)
    row = {**_split_row(report["test"]),
           "test_unseen": _split_row(report["test_unseen"]) if "test_unseen" in report else None,
           "train_seconds": report["train"]["seconds"], "train_images_per_second": report["train"]["images_per_second"],
           "total_seconds": round(time.time() - t0, 1), "preset": preset, "overrides": overrides,
           "machine": machine_description()}
    baselines = {split: {"center": round(report[split]["center_baseline"], 4),
                         "random": round(report[split]["random_baseline"], 4)}
                 for split in ("test", "test_unseen") if split in report}
    return row, baselines


def table(args: argparse.Namespace) -> None:
    command = " ".join(["python", "benchmarks/methods.py"] + sys.argv[1:])
    path = RESULTS / ("methods.json" if args.scale == "cpu" else f"methods_{args.scale}.json")
    for method in args.methods:
        preset = f"{PRESETS.get(method, method)}_{args.scale}"
        row, baselines = run_row(preset, DATA + args.set, Path(args.runs) / preset, not args.no_progress)
        row["command"] = command
        merge(path, "methods", method, row)
        for kind in ("center", "random"):  # the same images for every row, so one baseline per split
            merge(path, "baselines", kind, {split: b[kind] for split, b in baselines.items()})
        print(f"{method}: pointing {row['pointing_accuracy']:.3f} (unseen "
              f"{(row['test_unseen'] or {}).get('pointing_accuracy')}), t2i R@1 "
              f"{row['recall'].get('text_to_image', {}).get('R@1')}")
    print_table(json.loads(path.read_text()))


def ablations(args: argparse.Namespace) -> None:
    command = " ".join(["python", "benchmarks/methods.py"] + sys.argv[1:])
    path = RESULTS / "ablations.json"
    for slug in args.variants:
        label, overrides = ABLATIONS[slug]
        row, _ = run_row(f"multilevel_{args.scale}", DATA + overrides + args.set, Path(args.runs) / f"ablation_{slug}",
                         not args.no_progress)
        row.update(command=command, label=label)
        merge(path, "multilevel", slug, row)
        print(f"{label}: pointing {row['pointing_accuracy']:.3f}")
    print_ablations(json.loads(path.read_text()))


def inference(args: argparse.Namespace) -> None:
    import dataclasses

    from weakground.data.sources import dataset_spec
    from weakground.engine.phrase_eval import evaluate_phrase_grounding
    from weakground.engine.inference import load_checkpoint

    if min(args.shifts) < 1:
        sys.exit(f"--shifts: every value must be >= 1 (1: one pass), got {min(args.shifts)}")
    command = " ".join(["python", "benchmarks/methods.py"] + sys.argv[1:])
    path = RESULTS / "inference.json"
    for method in args.methods:
        run_dir = Path(args.runs) / f"{PRESETS.get(method, method)}_{args.scale}"
        checkpoint = run_dir / "checkpoints" / "train_best.safetensors"
        if not checkpoint.is_file():
            sys.exit(f"{checkpoint}: no checkpoint; run `python benchmarks/methods.py table --methods {method}` first")
        model, config = load_checkpoint(checkpoint)
        spec = dataset_spec(config.data)
        trained = model.config
        row = {"checkpoint": str(checkpoint), "split": "val", "n_images": config.data.n_val,
               "image_size": config.data.image_size, "pointing_accuracy": {}, "command": command,
               "machine": machine_description()}
        for label, params in HEATMAP_SETTINGS[method].items():
            model.config = dataclasses.replace(trained, **params)  # read at call time by heatmaps()
            for resize, shifts in itertools.product((False, True), args.shifts):
                # How the model reads images is fixed at construction: rebuild it with these settings.
                model, _ = load_checkpoint(checkpoint, overrides=[f"data.eval_resize={str(resize).lower()}",
                                                                  f"eval.shift_average={shifts}"])
                model.config = dataclasses.replace(trained, **params)  # read at call time by heatmaps()
                report = evaluate_phrase_grounding(model, spec, "val", max_images=config.data.n_val)
                key = (f"{label}, {'resized to the training square' if resize else 'own size'}, "
                       f"{'one pass' if shifts == 1 else f'{shifts}x{shifts} shifted copies'}")
                row["pointing_accuracy"][key] = round(report["pointing_accuracy"], 4)
                print(f"{method}: {key}: pointing {report['pointing_accuracy']:.3f}")
        merge(path, "methods", method, row)
    print_inference(json.loads(path.read_text()))


def print_inference(data: dict) -> None:
    print("\n| method | inference setting | pointing (val) |")
    print("|---|---|---|")
    for method, row in data.get("methods", {}).items():
        for key, value in row["pointing_accuracy"].items():
            print(f"| {method} | {key} | {_fmt(value)} |")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_table(data: dict) -> None:
    """The caption-grounding table (README, docs/tasks/caption_grounding.md): pointing (test / unseen),
    attention correctness, R@1/5/10 both ways, speed."""
    print("\n| method | pointing (test) | pointing (unseen) | attn. corr. | T→I R@1/5/10 | I→T R@1/5/10 | train img/s |")
    print("|---|---|---|---|---|---|---|")
    for method, row in data.get("methods", {}).items():
        t2i, i2t = row["recall"].get("text_to_image", {}), row["recall"].get("image_to_text", {})
        recall = lambda r: "/".join(_fmt(r.get(f"R@{k}"), 3) for k in (1, 5, 10))  # noqa: E731
        print(f"| {method} | {_fmt(row['pointing_accuracy'])} | {_fmt((row['test_unseen'] or {}).get('pointing_accuracy'))} "
              f"| {_fmt(row['attention_correctness'])} | {recall(t2i)} | {recall(i2t)} | "
              f"{_fmt(row['train_images_per_second'], 1)} |")
    for name, base in data.get("baselines", {}).items():
        print(f"| {name} baseline | {_fmt(base.get('test'))} | {_fmt(base.get('test_unseen'))} | | | | |")


def print_ablations(data: dict) -> None:
    """The ablation table (docs/methods/multilevel.md): each variant of ``multilevel`` beside the full model."""
    rows = data.get("multilevel", {})
    full = rows.get("full", {}).get("pointing_accuracy")
    print("\n| variant | pointing (test) | vs full | pointing (unseen) | attn. corr. | T→I R@1 | epochs |")
    print("|---|---|---|---|---|---|---|")
    for slug, row in rows.items():
        delta = "" if full is None or slug == "full" else f"{row['pointing_accuracy'] - full:+.3f}"
        epochs = next((o.split("=", 1)[1] for o in reversed(row["overrides"]) if o.startswith("train.epochs=")), "")
        print(f"| {row['label']} | {_fmt(row['pointing_accuracy'])} | {delta} "
              f"| {_fmt((row['test_unseen'] or {}).get('pointing_accuracy'))} | {_fmt(row['attention_correctness'])} "
              f"| {_fmt(row['recall'].get('text_to_image', {}).get('R@1'))} | {epochs} |")


def show_results(_args: argparse.Namespace) -> None:
    for name, printer in (("methods.json", print_table), ("ablations.json", print_ablations),
                          ("inference.json", print_inference)):
        if (RESULTS / name).is_file():
            printer(json.loads((RESULTS / name).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("table", table), ("ablations", ablations)):
        p = sub.add_parser(name)
        p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="which presets: <method>_<scale>")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
        p.add_argument("--runs", default="runs/benchmarks", help="where run directories go")
        p.add_argument("--no-progress", action="store_true")
        if name == "table":
            p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
        else:
            p.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
        p.set_defaults(func=func)
    p = sub.add_parser("inference", help="score validation images under each inference setting, reusing the "
                                         "checkpoints `table` trained")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--runs", default="runs/benchmarks", help="where `table` put its run directories")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--shifts", nargs="+", type=int, default=list(SHIFT_AVERAGES), metavar="N",
                   help="eval.shift_average values to try (N x N shifted copies; 1: one pass)")
    p.set_defaults(func=inference)
    show = sub.add_parser("show", help="print the tables from the committed results, running nothing")
    show.set_defaults(func=show_results)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
