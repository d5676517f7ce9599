"""Cold start of ``weakground locate``: a fresh interpreter, one photo, one phrase, end to end (imports, model
build, reading the image, grounding, drawing the overlay), against an earlier revision in the same run.

    PYTHONPATH=src python benchmarks/cold_start.py [--baseline e8cf0ef] [--runs 5]

The baseline's ``src/`` is taken from git (``git archive``) into a temporary folder and run with the same
interpreter and packages, alternating with this checkout's, so both see the same machine state. Also timed: a
missing image, which must be reported before any model loads. Writes ``benchmarks/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from weakground.engine.driver import machine_description

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The last revision whose MiniLM was built through transformers (before weakground.text.bert).
BASELINE = "e8cf0ef"


def _timed(src: Path, args: list[str], folder: Path) -> float:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "WEAKGROUND_CACHE": str(folder / "cache"),
           "HOME": str(folder)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "weakground", "locate", *args], env=env, capture_output=True,
                          text=True, cwd=folder)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 2):
        raise RuntimeError(f"{src}: locate failed:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_start.json")
    args = parser.parse_args()
    cases = {"photo": ["--demo", "chelsea", "the cat", "--out", "overlay.png"],
             "missing_image": ["missing.png", "the cat"]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = folder / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        sources = {"this": ROOT / "src", "baseline": base / "src"}
        for src in sources.values():  # warm the disk cache and the class-name embedding cache once each
            _timed(src, cases["photo"], folder)
        times: dict[str, dict[str, list[float]]] = {c: {s: [] for s in sources} for c in cases}
        for run in range(args.runs):
            for case, argv in cases.items():
                for name, src in sources.items():
                    times[case][name].append(_timed(src, argv, folder))
            print(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{c} {n} {t[n][-1]:.2f} s" for c, t in times.items() for n in sources), flush=True)
    report = {"command": "python benchmarks/cold_start.py " + " ".join(sys.argv[1:]), "baseline": args.baseline,
              "machine": machine_description(), "runs": args.runs,
              "cases": {"photo": "locate --demo chelsea 'the cat' (bridge, 451x300 photo, overlay written)",
                        "missing_image": "locate missing.png 'the cat' (one-line error, exit 2)"}}
    for case, per in times.items():
        medians = {name: round(statistics.median(v), 2) for name, v in per.items()}
        report[case] = {"median_s": medians, "all_s": {n: [round(x, 2) for x in v] for n, v in per.items()},
                        "ratio_this_to_baseline": round(medians["this"] / medians["baseline"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({c: report[c]["median_s"] for c in cases}), f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
