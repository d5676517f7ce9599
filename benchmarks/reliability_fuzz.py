"""Reader reliability under fuzzing (issue 30): seeded mutations of every format's test fixture, read back.

    PYTHONPATH=src python benchmarks/reliability_fuzz.py [--per-format 2000] [--out benchmarks/results/reliability_fuzz.json]

Each mutation changes one file of a copy of ``tests/fixtures/<format>`` (the engine is ``tests/reader_fuzzer.py``,
the same one the test suite runs on seeds 0..299; here seeds start at 100000, so the two never overlap) and reads
the dataset. Outcomes: ``clean`` (no problem), ``problems`` (read, with recorded problems), ``error`` (a one-line
WeakgroundError naming the file), ``crash`` (any other exception, or a multi-line WeakgroundError); ``escapes``
counts reads that opened or listed a path outside the dataset folder, or returned a record whose image is outside
it. Writes ``benchmarks/results/reliability_fuzz.json`` with the command and machine; exits 1 on any crash or
escape.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reader_fuzzer import FORMATS, copy_fixture, fuzz  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FIRST_SEED = 100_000
KEPT_FAILURES = 10


def run_format(name: str, count: int) -> dict:
    """Fuzz one format ``count`` times; counts per outcome, seconds, and the first failures."""
    fmt = FORMATS[name]
    counts = {"files": 0, "clean": 0, "problems": 0, "error": 0, "crash": 0, "escapes": 0}
    failures: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root, originals = copy_fixture(fmt, Path(tmp))
        for seed, target, outcome in fuzz(fmt, root, originals, range(FIRST_SEED, FIRST_SEED + count)):
            counts["files"] += 1
            counts[outcome.kind] += 1
            counts["escapes"] += bool(outcome.escapes)
            if (outcome.kind == "crash" or outcome.escapes) and len(failures) < KEPT_FAILURES:
                failures.append({"seed": seed, "target": target, "kind": outcome.kind, "detail": outcome.detail,
                                 "escapes": outcome.escapes[:5]})
            if counts["files"] % 500 == 0 or counts["files"] == count:
                print(f"\r{name}: {counts['files']}/{count} files, {counts['crash']} crashes, "
                      f"{counts['escapes']} escapes", end="", flush=True)
    print()
    return {**counts, "seconds": round(time.perf_counter() - start, 2), "first_crashes": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-format", type=int, default=2000, help="mutated datasets read per format")
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability_fuzz.json")
    args = parser.parse_args(argv)
    formats = {name: run_format(name, args.per_format) for name in sorted(FORMATS)}
    result = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
              "per_format": args.per_format, "first_seed": FIRST_SEED,
              "fixtures": {name: f"tests/fixtures/{fmt.fixture}: {', '.join(fmt.files)}"
                           for name, fmt in sorted(FORMATS.items())},
              "formats": formats,
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "python": platform.python_version()}}
    print("| format | files | clean | problems | error | crash | escapes | seconds |\n|---|---|---|---|---|---|---|---|")
    for name, v in formats.items():
        print(f"| {name} | {v['files']} | {v['clean']} | {v['problems']} | {v['error']} | {v['crash']} | "
              f"{v['escapes']} | {v['seconds']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")
    return 1 if any(v["crash"] or v["escapes"] for v in formats.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
