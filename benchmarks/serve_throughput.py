"""Server throughput (issue 32, item 5): ``weakground serve`` (bridge) of this checkout against a baseline
revision, side by side on the same machine, under the same load.

    PYTHONPATH=src python benchmarks/serve_throughput.py --baseline 06e881b [--requests 200] [--rounds 3]

The baseline's ``src/`` is taken from git (``git archive``) into a temporary folder and served by the same
interpreter and packages, as ``benchmarks/cold_start.py`` does. The two servers are started alternately (one at
a time, each on a free port, a fresh process per round), so both see the same machine state, and each is driven
with ``--requests`` POST /api/locate from ``--concurrency`` client threads: the bundled ``coffee`` demo photo cut
to 512 px on its long side (512x341 JPEG), 2 phrases, heatmap PNGs on (the page's default). Reported per
server: requests/s, p50/p95 latency, the statuses, the server's CPU time per request, the mean batch size,
and the ratio of this checkout's requests/s to the
baseline's (medians over the rounds), with the load average before and after. Writes
``benchmarks/results/serve_throughput.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_process import free_port, post_locate  # noqa: E402

from weakground.engine.driver import machine_description  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PHRASES = ["the coffee cup", "a spoon"]
WARM_UP = 8  # requests not counted: the first phrases embed bridge's class names, the first passes warm caches


def photo_512() -> bytes:
    from PIL import Image

    from weakground.data.demo_photos import demo_photo_path

    image = Image.open(demo_photo_path("coffee")).convert("RGB")
    image.thumbnail((512, 512), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=5) as r:
                return json.load(r)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(src: Path, server_args: list[str], photo: bytes, requests: int, concurrency: int, folder: Path) -> dict:
    """One fresh server of ``src`` under the load; its figures."""
    port, log = free_port(), folder / f"{src.parent.name}-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONPATH=str(src))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "weakground", "serve", "--port", str(port), *server_args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        health = _wait_healthy(url, proc, log)

        def one(_: int) -> tuple[int, float]:
            start = time.perf_counter()
            status, _ = post_locate(url, photo, PHRASES)
            return status, time.perf_counter() - start

        with ThreadPoolExecutor(concurrency) as pool:  # warm-up at the same concurrency, not counted
            list(pool.map(one, range(WARM_UP)))
        cpu_before, start = _cpu_seconds(proc.pid), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            done = list(pool.map(one, range(requests)))
        wall, server_cpu = time.perf_counter() - start, _cpu_seconds(proc.pid) - cpu_before
        after = _wait_healthy(url, proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    latency = np.array([t for _, t in done]) * 1000
    statuses: dict[str, int] = {}
    for status, _ in done:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests_per_s": round(requests / wall, 2), "p50_ms": round(float(np.percentile(latency, 50)), 1),
            "p95_ms": round(float(np.percentile(latency, 95)), 1), "statuses": statuses,
            "server_cpu_ms_per_request": round(1000 * server_cpu / requests, 1),
            "batch_settings": {k: health[k] for k in ("max_batch", "batch_wait_ms") if k in health},
            **({"mean_batch_size": round((after["batched_requests"] - health["batched_requests"])
                                         / max(1, after["batches"] - health["batches"]), 2)}
               if "batches" in health else {})}


def baseline_source(revision: str, folder: Path) -> Path:
    base = folder / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    return base / "src"


def summary(runs: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in runs), 2) for key in ("requests_per_s", "p50_ms", "p95_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. 06e881b)")
    parser.add_argument("--requests", type=int, default=200, help="counted requests per server and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (baseline, this, ...)")
    parser.add_argument("--server-args", default="", help="extra `weakground serve` flags for this checkout")
    parser.add_argument("--also-unbatched", action="store_true", help="a third server: this checkout with "
                        "--max-batch 1 (decoding still overlaps inference), to tell batching from the rest")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_throughput.json")
    args = parser.parse_args()
    photo = photo_512()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = {"baseline": (baseline_source(args.baseline, folder), []),
                   "this": (ROOT / "src", args.server_args.split())}
        if args.also_unbatched:
            sources["this_max_batch_1"] = (ROOT / "src", ["--max-batch", "1"])
        runs: dict[str, list[dict]] = {name: [] for name in sources}
        for round_ in range(args.rounds):
            for name, (src, extra) in sources.items():
                runs[name].append(drive(src, extra, photo, args.requests, args.concurrency, folder))
                print(f"round {round_ + 1}/{args.rounds} {name}: {json.dumps(runs[name][-1])}", flush=True)
    medians = {name: summary(r) for name, r in runs.items()}
    report = {"command": "python benchmarks/serve_throughput.py " + " ".join(sys.argv[1:]),
              "baseline": args.baseline, "machine": machine_description(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "load": {"requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds,
                       "photo": "demo coffee cut to 512x341, JPEG q90", "phrases": PHRASES,
                       "pictures": "heatmap_png on (default)"},
              "median": medians, "runs": runs,
              "ratio_requests_per_s": round(medians["this"]["requests_per_s"] / medians["baseline"]["requests_per_s"],
                                            2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": medians, "ratio": report["ratio_requests_per_s"]}), f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
