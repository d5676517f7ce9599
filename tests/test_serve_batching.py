"""The server's micro-batch queue (issue 32, item 5): concurrent requests answered together are answered as
each would be alone; a bad request in a batch fails only itself; a request whose deadline passes while it is
queued is dropped from its batch and never reaches the model."""

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the web app needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("python_multipart", reason="the web app needs python-multipart (the serve extra)")
from fastapi.testclient import TestClient  # noqa: E402

from weakground.data.demo_photos import demo_photo_path  # noqa: E402
from weakground.engine.inference import Predictor  # noqa: E402
from weakground.io import image_to_tensor, read_image  # noqa: E402
from weakground.serve.app import LoadedModel, ServeSettings, create_app  # noqa: E402
from weakground.serve.batching import Abandoned, MicroBatcher  # noqa: E402

# Batched and one-at-a-time answers go through different convolution batch sizes (and MiniLM padding), so
# they agree to float rounding, not bit for bit: maps within this, points exactly, boxes within a pixel.
MAP_TOLERANCE = 1e-4
# (photo, phrases): three working sizes (chelsea and coffee share one), different phrase counts, a person
# phrase and a head-part phrase (the face-detector path).
REQUESTS = [("chelsea", ["the cat"]), ("coffee", ["a cup of coffee", "the spoon", "a white saucer"]),
            ("astronaut", ["the astronaut", "her face"]), ("chelsea", ["the cat's eyes", "the wall on the left"]),
            ("rocket", ["the rocket"]), ("coffee", ["a table"])]


def test_batched_maps_equal_the_one_request_maps(bridge_model):
    predictor = Predictor(bridge_model, 0.5, "bridge")
    images = [image_to_tensor(read_image(demo_photo_path(name), channels=3)) for name, _ in REQUESTS]
    batched = predictor.heatmaps_many(images, [phrases for _, phrases in REQUESTS])
    worst = 0.0
    for image, (_, phrases), maps in zip(images, REQUESTS, batched):
        alone = predictor.heatmaps(image, phrases)
        assert maps.shape == alone.shape
        worst = max(worst, float((maps - alone).abs().max()))
    assert worst <= MAP_TOLERANCE, worst


def _concurrent(client, requests, photos):
    """POST every request at once (a barrier releases them together); the responses in request order."""
    answers: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(i: int) -> None:
        name, phrases = requests[i]
        barrier.wait()
        answers[i] = client.post("/api/locate", files={"image": (f"{name}.png", photos[name])},
                                 data={"phrases": phrases, "heatmap_png": "false"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _same_answer(batched: dict, alone: dict) -> None:
    assert batched["image"] == alone["image"]
    for b, a in zip(batched["results"], alone["results"], strict=True):
        assert b["phrase"] == a["phrase"] and b["point"] == a["point"]
        assert b["peak"] == pytest.approx(a["peak"], abs=MAP_TOLERANCE)
        assert len(b["boxes"]) == len(a["boxes"])
        assert np.allclose(b["boxes"], a["boxes"], atol=1.0) and np.allclose(b["box_scores"], a["box_scores"],
                                                                            atol=MAP_TOLERANCE)


def test_concurrent_requests_are_batched_and_answered_as_if_alone(bridge_model):
    photos = {name: demo_photo_path(name).read_bytes() for name, _ in REQUESTS}
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    photos["tiny"] = buffer.getvalue()
    requests = REQUESTS + [("tiny", ["a cup"])]  # below bridge's smallest side: a 400 of its own, inside a batch
    settings = ServeSettings(max_batch=8, batch_wait_ms=300.0, timeout_s=120.0)
    loader = lambda s: LoadedModel(Predictor(bridge_model, 0.5, "bridge"))  # noqa: E731
    with TestClient(create_app(settings, loader=loader)) as client:
        batched = _concurrent(client, requests, photos)
        health = client.get("/api/health").json()
    alone_settings = ServeSettings(max_batch=1, batch_wait_ms=0.0, timeout_s=120.0)
    with TestClient(create_app(alone_settings, loader=loader)) as client:
        alone = [client.post("/api/locate", files={"image": (f"{name}.png", photos[name])},
                             data={"phrases": phrases, "heatmap_png": "false"}) for name, phrases in requests]
    assert [r.status_code for r in batched] == [r.status_code for r in alone] == [200] * len(REQUESTS) + [400]
    assert batched[-1].json() == alone[-1].json()
    for b, a in zip(batched[:-1], alone[:-1]):
        _same_answer(b.json(), a.json())
    # They did share model calls: fewer calls than requests (the bad one's batch is rerun one by one).
    assert health["max_batch"] == 8 and health["batch_wait_ms"] == 300.0
    assert health["batched_requests"] > health["batches"], health


def _record_batches(sizes: list[int], gate: threading.Event):
    def run(images, phrases):
        gate.wait(10)
        sizes.append(len(images))
        return [torch.zeros(1, len(p), 2, 2) for p in phrases]

    return run


def _submit(batcher, deadline_s: float, out: dict, key: str) -> threading.Thread:
    def ask() -> None:
        try:
            out[key] = batcher.maps(torch.zeros(1, 3, 8, 8), ["x"], time.monotonic() + deadline_s,
                                    threading.Event()).shape
        except Abandoned:
            out[key] = "abandoned"

    thread = threading.Thread(target=ask)
    thread.start()
    return thread


def test_requests_waiting_for_the_model_go_in_one_batch():
    sizes, gate, out = [], threading.Event(), {}
    batcher = MicroBatcher(_record_batches(sizes, gate), threading.Lock(), max_batch=8, wait_s=0.0)
    first = _submit(batcher, 10, out, "first")
    time.sleep(0.3)  # the worker has taken the first request and is blocked in the model
    rest = [_submit(batcher, 10, out, f"r{i}") for i in range(4)]
    time.sleep(0.3)
    gate.set()
    for t in [first, *rest]:
        t.join(10)
    batcher.close()
    assert sizes == [1, 4] and set(out.values()) == {torch.Size([1, 1, 2, 2])}


def test_a_request_past_its_deadline_in_the_queue_is_dropped_from_its_batch():
    sizes, gate, out = [], threading.Event(), {}
    batcher = MicroBatcher(_record_batches(sizes, gate), threading.Lock(), max_batch=8, wait_s=0.0)
    first = _submit(batcher, 10, out, "first")
    time.sleep(0.3)
    expired = _submit(batcher, 0.2, out, "expired")  # gives up while the model is still busy with the first
    live = _submit(batcher, 10, out, "live")
    expired.join(10)
    assert out["expired"] == "abandoned"
    gate.set()
    for t in (first, live):
        t.join(10)
    batcher.close()
    assert sizes == [1, 1]  # the second batch ran the live request only
    assert out["first"] == out["live"] == torch.Size([1, 1, 2, 2])
