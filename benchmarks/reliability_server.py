"""The web server under its worst allowed request and under load (issue 30), on ``weakground serve`` (bridge)
started as a user starts it.

    PYTHONPATH=src python benchmarks/reliability_server.py [--requests 1000] [--concurrency 8]

* worst request: an all-zero ~89 MP RGBA PNG (just under the pixel limit; 356 MB once decoded at full size)
  with the most phrases a request may carry (16) and every picture asked for; sent once, then twice at once.
  Peak resident memory of the server process (``VmHWM`` from /proc), with its idle memory beside it.
* timeout: the worst request against ``--timeout-s 0.2``: when the 504 came, and how long until the server's
  ``in_progress`` count fell back to 0 (the job stopped at its next step).
* load: ``--requests`` POST /api/locate at ``--concurrency`` from one client machine (loopback): skimage's chelsea
  photo (451x300 PNG), 2 phrases, heatmaps on; errors, p50/p95 latency, requests/s.

Writes ``benchmarks/results/reliability_server.json`` with the command and the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_process import post_locate, running_server  # noqa: E402
from test_serve_limits import ALL_PICTURES, PHRASES, SIDE, worst_upload  # noqa: E402

from weakground.engine.driver import machine_description  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def worst_requests(upload: bytes, folder: Path) -> dict:
    out = {"image": f"{SIDE}x{SIDE} RGBA PNG, all zero, {len(upload) / 1024:.0f} kB", "phrases": len(PHRASES)}
    for copies in (1, 2):  # a fresh server each time, so each peak is its own
        with running_server(["--max-upload-mb", "10"], folder / f"worst{copies}.log") as server:
            idle = server.memory_mb("VmRSS")
            answers: list = []
            start = time.perf_counter()
            threads = [threading.Thread(target=lambda: answers.append(
                post_locate(server.url, upload, PHRASES, **ALL_PICTURES))) for _ in range(copies)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[f"{copies}_at_once"] = {"statuses": sorted(a[0] for a in answers),
                                        "seconds": round(time.perf_counter() - start, 2),
                                        "idle_rss_mib": round(idle), "peak_rss_mib": round(server.memory_mb())}
    return out


def timeout(upload: bytes, folder: Path) -> dict:
    with running_server(["--timeout-s", "0.2"], folder / "timeout.log") as server:
        start = time.perf_counter()
        status, _ = post_locate(server.url, upload, PHRASES, **ALL_PICTURES)
        answered = time.perf_counter() - start
        while server.health()["in_progress"]:
            time.sleep(0.02)
        return {"status": status, "answered_s": round(answered, 2),
                "work_stopped_s": round(time.perf_counter() - start, 2)}


def load(requests: int, concurrency: int, folder: Path) -> dict:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "PNG")
    photo = buf.getvalue()
    with running_server([], folder / "load.log") as server:
        def one(_: int) -> tuple[int, float]:
            t = time.perf_counter()
            status, _ = post_locate(server.url, photo, ["the cat", "a cup of coffee"])
            return status, time.perf_counter() - t

        for _ in range(5):  # warm-up, not counted
            one(0)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            done = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
        peak = server.memory_mb()
    latency = np.array([t for _, t in done]) * 1000
    statuses: dict[str, int] = {}
    for status, _ in done:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": requests, "concurrency": concurrency, "photo": "skimage chelsea 451x300 PNG, 2 phrases",
            "statuses": statuses, "errors": sum(n for s, n in statuses.items() if s != "200"),
            "p50_ms": round(float(np.percentile(latency, 50)), 1), "p95_ms": round(float(np.percentile(latency, 95)), 1),
            "requests_per_s": round(requests / wall, 2), "peak_rss_mib": round(peak)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability_server.json")
    args = parser.parse_args()
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # only to build the test file; the server keeps its own limit
    upload = worst_upload()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = {"command": "python benchmarks/reliability_server.py " + " ".join(sys.argv[1:]),
                  "machine": machine_description(), "server": "weakground serve (bridge), default limits",
                  "worst_request": worst_requests(upload, folder)}
        print(json.dumps(report["worst_request"]), flush=True)
        report["timeout"] = timeout(upload, folder)
        print(json.dumps(report["timeout"]), flush=True)
        report["load"] = load(args.requests, args.concurrency, folder)
        print(json.dumps(report["load"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if report["load"]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
