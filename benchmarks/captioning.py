"""Hu et al.'s Tables 1 and 2 in kind, on the synthetic captioned scenes, plus the box-free row.

    python benchmarks/captioning.py table              # every row (under an hour on 2 CPU cores)
    python benchmarks/captioning.py table --rows ss updown
    python benchmarks/captioning.py show               # print the tables from benchmarks/results/captioning.json

Every row trains the ``ss_attention_cpu`` preset's captioner from nothing on the same cached scenes (3,000
training images, 5 captions each), with the same region proposals (``components``: colour components, no ground
truth at test time, up to 16 per image) and region features (computed once and shared by the rows of one run),
picks the epoch by validation CIDEr-D (greedy decoding on 100 images), and scores the 500 ``test`` images with beam
search (beam 3): BLEU-1/4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap; SPICE unavailable offline) and the grounding
F1 of every object word written (F1_all, F1_loc; Zhou et al.'s definition, IoU > 0.5). Rows:

* Table 1: ``updown`` (Up-Down, no prior), ``ss_no_gnd`` (SS attention, mu = 0), ``ss`` (SS with L_gnd from the
  ground-truth boxes of the mentioned entities: the paper's box use, in training only);
* Table 2: ``ss_p_as_v`` / ``ss_c_as_v`` (the prior reads the region feature instead of the box / the classes);
* ``ss_box_free``: L_gnd's targets from the peaks of a matchmap grounder trained on captions alone (trained here
  first, ``matchmap_cpu``), so no box is used anywhere;
* ``ss_oracle_regions``: ground-truth boxes as the regions (ORACLE, an upper bound, not a result).

Results merge into ``benchmarks/results/captioning.json`` after every row, with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from weakground.config import load_config
from weakground.engine.driver import machine_description, run_experiment

RESULTS = Path(__file__).parent / "results" / "captioning.json"
RUNS = Path("runs") / "captioning"
ROWS = {  # slug -> (label, overrides of the ss_attention_cpu preset), in the order a full run trains them
    "ss": ("SS attention", []),
    "updown": ("Up-Down (baseline)", ["method.name=updown", "method.params.mu=0", "method.params.grounding=none"]),
    "ss_no_gnd": ("SS attention without L_gnd", ["method.params.mu=0", "method.params.grounding=none"]),
    "ss_p_as_v": ("SS attention, p replaced by v", ["method.params.position_input=v"]),
    "ss_c_as_v": ("SS attention, c replaced by v", ["method.params.class_input=v"]),
    "ss_box_free": ("SS attention, box-free L_gnd (matchmap peaks)", ["method.params.grounding=grounder"]),
    "ss_oracle_regions": ("SS attention, ORACLE regions (ground-truth boxes)",
                          ["method.params.regions={source: oracle, max_regions: 16, level: c4, grid: [1]}"]),
}
COLUMNS = (("BLEU-1", "B@1"), ("BLEU-4", "B@4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE-L"), ("CIDEr", "CIDEr-D"))
PAPER = {"updown": [71.0, 29.5, 22.2, None, 63.4, 4.22, 12.45], "ss": [72.0, 30.8, 22.7, None, 65.6, 5.52, 15.69]}


def _grounder(progress: bool) -> Path:
    """A matchmap checkpoint trained on the scenes' captions alone (the box-free row's source of targets)."""
    checkpoint = RUNS / "matchmap_grounder" / "checkpoints" / "train_best.safetensors"
    if not checkpoint.is_file():
        run_experiment(load_config("matchmap_cpu"), checkpoint.parent.parent, progress=progress, figure=False)
    return checkpoint


def _row(slug: str, epochs: int | None, progress: bool) -> dict:
    overrides = list(ROWS[slug][1])
    if slug == "ss_box_free":
        overrides.append(f"method.params.grounder_checkpoint={_grounder(progress)}")
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    config = load_config("ss_attention_cpu", overrides)
    start = time.time()
    report = run_experiment(config, RUNS / slug, progress=progress, figure=False)
    test = report["test"]
    return {"label": ROWS[slug][0], "overrides": overrides, "regions": report["regions"],
            "box_use": report["box_use"], "captions": {k: v for k, v in test["captions"].items() if k != "unavailable"},
            "unavailable": test["captions"].get("unavailable", {}), "grounding": test["grounding"],
            "train_images_per_second": report["train"]["images_per_second"],
            "best_val": report["train"]["best_val"], "seconds": round(time.time() - start, 1),
            "examples": test["examples"][:3]}


def table(args: argparse.Namespace) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    for slug in args.rows:
        print(f"== {slug}: {ROWS[slug][0]}", flush=True)
        results["rows"][slug] = _row(slug, args.epochs, not args.no_progress)
        results.update({"machine": machine_description(), "command": " ".join(["python", *sys.argv]),
                        "protocol": __doc__.split("Rows:")[0].strip().split("\n\n")[-1]})
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        show(args)


def _cells(row: dict) -> list[str]:
    cap, gnd = row["captions"], row["grounding"]
    cells = [f"{100 * cap[k]:.1f}" if cap.get(k) is not None else "n/a" for k, _ in COLUMNS]  # in %, as papers
    return cells + [f"{100 * gnd['f1_all']:.2f}", f"{100 * gnd['f1_loc']:.2f}", f"{row['train_images_per_second']}"]


def show(args: argparse.Namespace) -> None:
    results = json.loads(RESULTS.read_text())
    head = ["row", *[c for _, c in COLUMNS], "F1_all", "F1_loc", "train captions/s"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for slug, row in results["rows"].items():
        print(f"| {row['label']} | " + " | ".join(_cells(row)) + " |")
    for slug, values in PAPER.items():
        cells = ["n/a" if v is None else f"{v}" for v in values]
        print(f"| paper (Flickr30k Entities): {ROWS[slug][0]} | " + " | ".join(cells) + " | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table", help="train and score the rows")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=int, help="override the preset's epochs (every row alike)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=table)
    sub.add_parser("show", help="print the tables from the committed results").set_defaults(func=show)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
