"""Pointing game of the zero-training ``bridge`` method on the demo photos, with center and random baselines.

    PYTHONPATH=src python benchmarks/demo_pointing.py [--set image_size=448 --set scales=[1.0,2.0]]
    PYTHONPATH=src python benchmarks/demo_pointing.py --split heldout   # the held-out photos (none tuned on)

Protocol: tolerance 0 px, a hit if the point lies in any ground-truth box of the phrase, no area filter, argmax
on the heatmap bilinearly resized to the image; one query per phrase mention (Flickr30K Entities convention).
``--split tuning`` (default) scores the 9 demo photos the defaults were chosen on; ``--split heldout`` the 9
held-out photos no default was chosen on. Writes ``benchmarks/results/demo_pointing.json`` (tuning; with the
command, settings and machine), or merges the held-out result into it under ``"heldout"``, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from weakground.config import parse_override
from weakground.data.demo_photos import SPLITS, read_demo
from weakground.engine.driver import machine_description
from weakground.io import read_image
from weakground.methods import create_method
from weakground.metrics.pointing import (PointingProtocol, center_baseline, heatmap_point, pointing_game,
                                         random_baseline_accuracy)

RESULTS = Path(__file__).parent / "results"
# How the defaults were chosen, stated with every tuning-split result (held-out: --split heldout).
SELECTION_NOTE = (
    "The bridge defaults were chosen on this same 57-phrase demo set (the tuning split), among about twenty "
    "general settings: image_size 224(+2x)/448/512/640/896, scales [1]/[1,1.5]/[0.5,1], contrast 0/0.5/0.75/1, "
    "temperature 0.05/0.1/0.2, evidence_power 0/0.25/0.5/1, top_k 5/10/20; they scored 0.49-0.75. The face "
    "cascade for head parts and the colour-word rule were added after looking at misses. One phrase is 0.018 of "
    "accuracy, so differences of one or two phrases are noise, and the number is optimistic for unseen photos. "
    "The colour prior (issue: held-out 0.478) was then chosen here among 30 more settings: colour_weight "
    "0.5/0.75/1, colour_sigma 10/12/15/20/25, efficientnet-lite2 at 320/448/512/576/640 px, scales [1,1.5]/[0.5,1], "
    "image_size 384/512/640, contrast 0.25/0.75, evidence_power 0.25/1, temperature 0.05, top_k 10, a 'dark' "
    "colour, 'navy' as a colour, the head noun mixed into the class match 0.25/0.5/1 (0.68-0.81; defaults 0.807). "
    "The side-word and 'another' rules are untuned priors: no tuning phrase has such a word.")
# ... and with every held-out result: that split exists so that one figure is not tuned on.
HELDOUT_NOTE = (
    "The held-out split: 9 photos from other packages (Debian labelme-examples, mahotas, skimage clock_motion), "
    "annotated by hand after the defaults were fixed; no default, rule or calibration was chosen on it. First "
    "scored with the earlier defaults (0.478); the colour, side-word and 'another' rules were then fixed on the "
    "tuning split, and the split scored once for each of two candidates named beforehand: colour only 0.500, "
    "colour + side + another (the defaults, kept as named beforehand) 0.522.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a bridge setting, e.g. --set temperature=0.1")
    parser.add_argument("--split", choices=list(SPLITS), default="tuning",
                        help="tuning: the demo photos the defaults were chosen on; heldout: photos nothing was "
                        "chosen on (merged into the JSON under \"heldout\")")
    parser.add_argument("--out", type=Path, default=RESULTS / "demo_pointing.json")
    parser.add_argument("--no-write", action="store_true", help="print only (for trying settings)")
    args = parser.parse_args(argv)
    params = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        params[keys[-1]] = value
    model = create_method("bridge", None, [], params).eval()
    data = read_demo(split=args.split)
    protocol = PointingProtocol(tolerance=0.0, box_rule="any", min_area=0.0, argmax_on="image")
    heatmaps, boxes, sizes, rows = [], [], [], []
    t0 = time.perf_counter()
    for record in data.records:
        image = read_image(record.path, channels=3)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)
        phrases = [p for c in record.captions for p in c.phrases]
        maps = model.heatmaps(tensor, [p.text for p in phrases])[0]
        for phrase, hm in zip(phrases, maps):
            gt = torch.tensor([b.as_list() for b in phrase.boxes])
            heatmaps.append(hm)
            boxes.append(gt)
            sizes.append(tuple(image.shape[:2]))
            rows.append({"image": record.image_id, "phrase": phrase.text, "type": phrase.phrase_types[0],
                         "point": [round(v, 1) for v in heatmap_point(hm, sizes[-1])]})
    seconds = time.perf_counter() - t0
    game = pointing_game(heatmaps, boxes, sizes, protocol)
    for row, hit in zip(rows, game["hits"]):
        row["hit"] = hit
    result = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "split": args.split, "method": "bridge", "settings": vars(model.config), "protocol": protocol.describe(),
        "n_images": len(data.records), "n_queries": game["n_queries"],
        "accuracy": {"bridge": game["accuracy"], "center": center_baseline(boxes, sizes, protocol),
                     "random": random_baseline_accuracy(boxes, sizes, protocol)},
        "by_type": {t: {"hits": sum(bool(r["hit"]) for r in rows if r["type"] == t),
                        "n": sum(r["type"] == t for r in rows)} for t in sorted({r["type"] for r in rows})},
        "selection_note": SELECTION_NOTE if args.split == "tuning" else HELDOUT_NOTE,
        "seconds_total": round(seconds, 2), "machine": machine_description(), "per_query": rows,
    }
    print(f"demo set ({args.split}): {result['n_images']} photos, {result['n_queries']} phrases; pointing game, "
          "tolerance 0, any box")
    print("| method | pointing accuracy |\n|---|---|")
    for name, acc in result["accuracy"].items():
        print(f"| {name} | {acc:.3f} |")
    print("by type: " + ", ".join(f"{t} {v['hits']}/{v['n']}" for t, v in result["by_type"].items()))
    misses = [f"{r['image']}: {r['phrase']}" for r in rows if not r["hit"]]
    print(f"misses ({len(misses)}): " + "; ".join(misses))
    if not args.no_write:
        write(args.out, result, args.split)
    return 0


def write(out: Path, result: dict, split: str) -> None:
    """The tuning result is the file's top level (as before the split existed); a held-out one goes under
    ``"heldout"``, and each run keeps the other split's entry."""
    old = json.loads(out.read_text()) if out.is_file() else {}
    if split == "tuning":
        result = {**result, **({"heldout": old["heldout"]} if "heldout" in old else {})}
    else:
        result = {**old, "heldout": result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    raise SystemExit(main())
