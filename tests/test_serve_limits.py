"""The server's memory and time bounds, on ``weakground serve`` started as a user would (issue 30): the worst
upload it accepts (the largest pixel count, every phrase, every picture) stays under a stated peak memory, and
a request past its timeout gets 504 while the server keeps answering."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image
from serve_process import post_locate, running_server

from weakground.io import MAX_PIXELS
from weakground.serve.app import MAX_PHRASES

pytest.importorskip("fastapi", reason="the web app needs the serve extra")

PEAK_RSS_LIMIT_MB = 1500  # the aim for the worst allowed request, model included
SIDE = int(MAX_PIXELS ** 0.5) - 50  # 9436 px square: just under the pixel limit


def worst_upload() -> bytes:
    """An all-zero RGBA PNG of ~89 MP: a few hundred kB on the wire, 356 MB once decoded at full size."""
    buf = io.BytesIO()
    Image.new("RGBA", (SIDE, SIDE)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


@pytest.fixture(scope="module")
def upload() -> bytes:
    Image.MAX_IMAGE_PIXELS = None  # only for building the file here; the server keeps its own limit
    return worst_upload()


PHRASES = [f"thing {i}" for i in range(MAX_PHRASES)]
ALL_PICTURES = {"heatmap_png": "true", "overlay_png": "true", "image_png": "true"}


def test_worst_allowed_uploads_stay_under_the_peak_memory(tmp_path, upload):
    with running_server(["--max-upload-mb", "10"], tmp_path / "serve.log") as server:
        idle = server.memory_mb("VmRSS")
        results = []

        def send() -> None:
            results.append(post_locate(server.url, upload, PHRASES, **ALL_PICTURES))

        threads = [threading.Thread(target=send) for _ in range(2)]  # two at once: decoded one at a time
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = server.memory_mb("VmHWM")
    for status, body in results:
        assert status == 200, body
        assert body["image"]["width"] == body["image"]["height"] == SIDE
        assert len(body["results"]) == MAX_PHRASES
        assert all(0 <= r["point"][0] < SIDE and 0 <= r["point"][1] < SIDE for r in body["results"])
    print(f"server RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB over two {SIDE}x{SIDE} uploads")
    assert peak < PEAK_RSS_LIMIT_MB, f"peak RSS {peak:.0f} MiB (idle {idle:.0f} MiB)"


def _wait_idle(server, seconds: float = 60.0) -> int:
    deadline = time.monotonic() + seconds
    while server.health()["in_progress"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.health()["in_progress"]


def test_a_timed_out_request_gets_504_while_the_server_keeps_answering(tmp_path, upload):
    small = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(small, "PNG")
    with running_server(["--timeout-s", "1"], tmp_path / "serve.log") as server:
        # Warm-up: the first phrase on a fresh machine also embeds bridge's class names (seconds); that job
        # runs to its end even if its client got a 504, so the next small request is answered in time.
        post_locate(server.url, small.getvalue(), ["a red square"])
        assert _wait_idle(server) == 0
        start = time.monotonic()
        status, body = post_locate(server.url, upload, PHRASES, **ALL_PICTURES)
        answered = time.monotonic() - start
        assert status == 504 and "no answer within 1 s" in body["detail"]
        assert answered < 3.0  # at the deadline, not when decoding + 16 phrases + pictures end (~3.5 s here)
        assert server.health()["status"] == "ok"  # answered while the timed-out job may still be decoding
        assert _wait_idle(server, 30) == 0  # the job stopped and gave its slot back
        status, body = post_locate(server.url, small.getvalue(), ["a red square"])
        assert status == 200 and body["image"]["width"] == 64
