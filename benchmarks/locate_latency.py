"""Latency of `locate` with the zero-training `bridge` method on this machine's CPU.

    PYTHONPATH=src python benchmarks/locate_latency.py [--runs 30]

* warm: one photo (skimage's chelsea, 451x300) and three phrases through ``model.heatmaps`` (phrase encoding,
  EfficientNet-Lite0 forward, class-activation maps) plus resizing the maps to the photo and taking the peaks,
  with the models already loaded; at working sizes (long side) 224 and 448 px; p50 and p95 over ``--runs``.
  Two phrase sets: object phrases only, and one with a person's head part (runs the face cascade).
* cold: ``weakground --help`` in a fresh interpreter (what a user waits for before anything happens), and one
  full ``weakground locate`` call end to end (load models, read the image, ground, draw the overlay).

Writes ``benchmarks/results/locate_latency.json`` with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from weakground.engine.driver import machine_description
from weakground.io import image_to_tensor
from weakground.methods import create_method
from weakground.metrics import resize_heatmap

RESULTS = Path(__file__).parent / "results"
PHRASE_SETS = {"objects": ["the cat", "a cup of coffee", "whiskers"],
               "with_head_part": ["the cat", "her face", "a pink nose"]}


def _percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.array(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p95_ms": round(float(np.percentile(arr, 95)), 1),
            "runs": len(samples)}


def warm(runs: int) -> dict:
    from skimage import data

    image = data.chelsea()
    tensor = image_to_tensor(image)
    out: dict = {}
    for size in (224, 448):
        model = create_method("bridge", None, [], {"image_size": size}).eval()
        for name, phrases in PHRASE_SETS.items():
            def once() -> None:
                with torch.no_grad():
                    maps = resize_heatmap(model.heatmaps(tensor, phrases), image.shape[:2])[0]
                    maps.flatten(1).argmax(1)

            for _ in range(3):
                once()
            samples = []
            for _ in range(runs):
                t = time.perf_counter()
                once()
                samples.append(time.perf_counter() - t)
            out[f"{size}px/{name}"] = _percentiles(samples)
    return out


def cold(runs: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    helps = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "weakground", "--help"], env=env, check=True, capture_output=True)
        helps.append(time.perf_counter() - t)
    from skimage import data
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "chelsea.png"
        Image.fromarray(data.chelsea()).save(photo)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "weakground", "locate", str(photo), "the cat", "a pink nose",
                        "--out", str(Path(tmp) / "o.png")], env=env, check=True, capture_output=True)
        locate_once = time.perf_counter() - t
    return {"help": _percentiles(helps), "locate_end_to_end_once_ms": round(locate_once * 1000.0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "locate_latency.json")
    args = parser.parse_args(argv)
    result = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
              "photo": "skimage.data.chelsea (451x300)", "phrase_sets": PHRASE_SETS,
              "warm": warm(args.runs), "cold": cold(args.cold_runs), "machine": machine_description(),
              "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    print("| setting | p50 ms | p95 ms |\n|---|---|---|")
    for key, v in result["warm"].items():
        print(f"| warm {key} | {v['p50_ms']} | {v['p95_ms']} |")
    print(f"| cold `weakground --help` | {result['cold']['help']['p50_ms']} | {result['cold']['help']['p95_ms']} |")
    print(f"| cold `weakground locate` once, end to end | {result['cold']['locate_end_to_end_once_ms']} | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out} (load average {result['load_average_at_end']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
