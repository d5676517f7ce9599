"""`weakground serve`'s JSON API through FastAPI's TestClient: good answers, every kind of bad input with its
status code and one-line reason, the upload limit, the timeout, and a server that keeps answering after all of it."""

import base64
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

from weakground.config import BackboneConfig  # noqa: E402
from weakground.data.demo_photos import demo_photo_path  # noqa: E402
from weakground.engine.inference import Predictor  # noqa: E402
from weakground.serve.app import LoadedModel, ServeSettings, create_app  # noqa: E402


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode_png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


@pytest.fixture(scope="module")
def client(bridge_model):
    app = create_app(ServeSettings(max_upload_bytes=2 * 1024 * 1024, timeout_s=60.0),
                     loader=lambda settings: LoadedModel(Predictor(bridge_model, 0.5, "bridge")))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def chelsea() -> bytes:
    return demo_photo_path("chelsea").read_bytes()


def locate(client, data: bytes, phrases, name="photo.png", **fields):
    form = {"phrases": phrases, **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}}
    return client.post("/api/locate", files={"image": (name, data, "application/octet-stream")}, data=form)


def test_health_methods_and_demo_photos(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["method"] == "bridge"
    assert health["max_upload_bytes"] == 2 * 1024 * 1024 and health["max_phrase_chars"] == 1000
    assert health["captioner"] is None  # this server was started without --caption-checkpoint
    methods = client.get("/api/methods").json()
    assert methods["served"] == "bridge"
    by_name = {m["name"]: m for m in methods["methods"]}
    assert by_name["bridge"]["served"] and not by_name["bridge"]["trainable"]
    assert by_name["mcb_attention"]["trainable"]
    photos = client.get("/api/demo-photos").json()
    assert {"astronaut", "chelsea"} <= {p["name"] for p in photos}
    r = client.get("/api/demo-photos/chelsea")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    r = client.get("/api/demo-photos/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="locate-form"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "cdn" not in page.text.lower() and "http://" not in page.text and "https://" not in page.text


def test_openapi_schema_is_typed(client):
    schema = client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    result = models["PhraseResult"]["properties"]
    assert {"phrase", "point", "peak", "boxes", "box_scores", "heatmap_png", "overlay_png"} <= set(result)
    assert result["point"]["type"] == "array" and len(result["point"]["prefixItems"]) == 2
    post = schema["paths"]["/api/locate"]["post"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/LocateResponse")
    for code in ("400", "413", "415", "422", "504"):
        assert post["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    form = models[post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]]
    assert {"image", "phrases", "threshold"} <= set(form["properties"]) and set(form["required"]) == {
        "image", "phrases"}
    assert models["HealthResponse"]["properties"]["method"]["type"] == "string"


def test_locate_a_real_photo_with_non_ascii_phrases(client, chelsea):
    r = locate(client, chelsea, ["the cat", "café table", "猫の目"], name="chelsea.png", overlay_png=True,
               image_png=True)
    assert r.status_code == 200, r.text
    answer = r.json()
    # bridge's default boxes are instance boxes (one per object), so no threshold was used
    assert answer["method"] == "bridge" and answer["boxes"] == "instance" and answer["threshold"] is None
    assert answer["image"] == {"name": "chelsea.png", "width": 451, "height": 300}
    assert [res["phrase"] for res in answer["results"]] == ["the cat", "café table", "猫の目"]
    for res in answer["results"]:
        x, y = res["point"]
        assert 0 <= x < 451 and 0 <= y < 300 and 0 < res["peak"] <= 1.0 + 1e-6
        assert res["boxes"] and len(res["boxes"]) == len(res["box_scores"])
        for x1, y1, x2, y2 in res["boxes"]:
            assert 0 <= x1 < x2 <= 451 and 0 <= y1 < y2 <= 300
        assert any(x1 <= x < x2 and y1 <= y < y2 for x1, y1, x2, y2 in res["boxes"])  # the peak is boxed
        assert decode_png(res["heatmap_png"]).size == (451, 300)
        assert decode_png(res["overlay_png"]).size == (451, 300)
    assert decode_png(answer["image_png"]).size == (451, 300)
    cat = answer["results"][0]
    x, y = cat["point"]
    assert 20 <= x <= 420 and y <= 280  # somewhere on the cat, which fills the frame
    assert cat["found"] is True and cat["presence"] >= 0.5
    loose = locate(client, chelsea, ["the cat"], heatmap_png=False, boxes="threshold").json()
    r = locate(client, chelsea, ["the cat"], heatmap_png=False, threshold=0.9)
    tight = r.json()["results"][0]
    assert r.json()["boxes"] == "threshold" and r.json()["threshold"] == 0.9 and loose["threshold"] == 0.5
    assert tight["heatmap_png"] is None and tight["overlay_png"] is None and r.json()["image_png"] is None
    assert tight["point"] == cat["point"] and len(tight["boxes"]) <= len(loose["results"][0]["boxes"])


def test_absent_phrase_is_not_found_but_still_drawn(client, chelsea):
    answer = locate(client, chelsea, ["the cat", "a red shirt", "the clock"]).json()
    cat, shirt, clock = answer["results"]
    assert cat["found"] is True and shirt["found"] is False and clock["found"] is False
    assert shirt["presence"] < 0.5 <= cat["presence"]
    assert shirt["heatmap_png"] and shirt["boxes"]  # "not found" still shows where the map peaks
    health = client.get("/api/health").json()
    assert health["presence"] is True and health["default_boxes"] == "instance"


def test_instance_boxes_with_a_threshold_are_422_in_one_line(client, chelsea):
    r = locate(client, chelsea, ["the cat"], boxes="instance", threshold=0.3)
    assert r.status_code == 422 and "threshold boxes" in r.json()["detail"]
    r = locate(client, chelsea, ["the cat"], boxes="octagons")
    assert r.status_code == 422 and "\n" not in r.json()["detail"]


def _modes():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    deep = Image.fromarray((rng.integers(0, 4000, (48, 64))).astype(np.uint16))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees: portrait
    return {
        "16-bit": (png_bytes(deep), (64, 48)),
        "cmyk": (png_bytes(rgb.convert("CMYK"), "JPEG"), (64, 48)),
        "rgba": (png_bytes(rgba), (64, 48)),
        "palette": (png_bytes(rgb.convert("P"), "GIF"), (64, 48)),
        "grayscale": (png_bytes(rgb.convert("L")), (64, 48)),
        "exif-rotated": (png_bytes(rgb, "JPEG", exif=exif), (48, 64)),
        "tiff": (png_bytes(rgb, "TIFF"), (64, 48)),
        "webp": (png_bytes(rgb, "WEBP"), (64, 48)),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_image_mode_is_accepted(client, mode):
    data, (w, h) = _modes()[mode]
    r = locate(client, data, ["a dog"], image_png=True)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["image"]["width"], answer["image"]["height"]) == (w, h)
    assert decode_png(answer["image_png"]).mode in ("RGB", "L")


@pytest.mark.parametrize("make, status, reason", [
    (lambda photo: b"hello, I am a text file", 415, "not an image format"),
    (lambda photo: b"%PDF-1.4\n" + bytes(200), 415, "not an image format"),
    (lambda photo: photo[: len(photo) // 3], 400, "cannot read image"),
    (lambda photo: b"", 400, "empty file"),
    (lambda photo: png_bytes(Image.new("1", (10_000, 10_000))), 400, "above the 90 MP limit"),  # 12 kB, 100 MP
])
def test_bad_files_get_a_status_and_a_reason(client, chelsea, make, status, reason):
    r = locate(client, make(chelsea), ["the cat"], name="bad.png")
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"] and "\n" not in r.json()["detail"]


@pytest.mark.parametrize("phrases, reason", [
    ([""], "phrase 1 is empty"),
    (["the cat", "   "], "phrase 2 is empty"),
    (["x" * 10_000], "10,000 characters long; the limit is 1,000"),
    ([f"thing {i}" for i in range(17)], "17 phrases; the limit is 16"),
    (["the\x00cat"], "control characters"),
])
def test_bad_phrases_are_422_with_a_reason(client, chelsea, phrases, reason):
    r = locate(client, chelsea, phrases)
    assert r.status_code == 422 and reason in r.json()["detail"], r.text


def test_missing_fields_and_bad_threshold_are_422_in_one_line(client, chelsea):
    r = client.post("/api/locate", files={"image": ("a.png", chelsea, "image/png")})
    assert r.status_code == 422 and r.json() == {"detail": "phrases: Field required"}
    r = client.post("/api/locate", data={"phrases": "the cat"})
    assert r.status_code == 422 and r.json() == {"detail": "image: Field required"}
    r = locate(client, chelsea, ["the cat"], threshold=1.5)
    assert r.status_code == 422 and r.json()["detail"].startswith("threshold:")
    r = client.post("/api/locate", json={"phrases": ["the cat"]})
    assert r.status_code == 422


def test_phrase_whitespace_is_normalised(client, chelsea):
    r = locate(client, chelsea, ["  the   cat \t"], heatmap_png=False)
    assert r.status_code == 200 and r.json()["results"][0]["phrase"] == "the cat"


def test_upload_over_the_limit_is_413_by_header_and_by_stream(client, chelsea):
    big = bytes(3 * 1024 * 1024)  # limit in this app: 2 MB
    r = locate(client, big, ["the cat"])
    assert r.status_code == 413 and "the limit is 2 MB" in r.json()["detail"]

    # Chunked (no Content-Length): counted as it streams in. (TestClient buffers the body; against uvicorn the
    # middleware answers before the rest is read.)
    boundary = "wgboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"phrases\"\r\n\r\nthe cat\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(64):  # 64 x 64 kB = 4 MB, if all of it were read
            yield bytes(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/api/locate", content=body(), headers={
        "content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "without a Content-Length" in r.json()["detail"]


def test_file_limit_is_exact(bridge_model, chelsea):
    # Within the body allowance (the image + form overhead) but over the file limit: the handler's own check.
    app = create_app(ServeSettings(max_upload_bytes=len(chelsea) - 1),
                     loader=lambda s: LoadedModel(Predictor(bridge_model, 0.5, "bridge")))
    with TestClient(app) as c:
        r = locate(c, chelsea, ["the cat"], name="chelsea.png")
        assert r.status_code == 413 and "chelsea.png: over the" in r.json()["detail"]
    app = create_app(ServeSettings(max_upload_bytes=len(chelsea)),
                     loader=lambda s: LoadedModel(Predictor(bridge_model, 0.5, "bridge")))
    with TestClient(app) as c:
        assert locate(c, chelsea, ["the cat"], heatmap_png=False).status_code == 200


class SlowModel(torch.nn.Module):
    """Stands in for a model that takes longer than the server's timeout."""

    name = "slow"
    backbone_config = BackboneConfig(in_channels=3)

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def grounding_maps(self, images, phrases):
        self.calls += 1
        time.sleep(self.seconds)
        return torch.ones(1, len(phrases), 4, 4)


def test_timeout_is_504_and_the_server_keeps_answering(chelsea):
    model = SlowModel(1.5)
    app = create_app(ServeSettings(timeout_s=0.3), loader=lambda s: LoadedModel(Predictor(model, 0.5, "slow")))
    with TestClient(app) as c:
        start = time.monotonic()
        r = locate(c, chelsea, ["the cat"])
        assert r.status_code == 504 and "no answer within 0.3 s" in r.json()["detail"]
        assert time.monotonic() - start < 1.2  # answered at the deadline, not when the model finished
        # A request queued behind the running one gives up at its own deadline and never reaches the model.
        r = locate(c, chelsea, ["the cat"])
        assert r.status_code == 504
        assert c.get("/api/health").status_code == 200
        time.sleep(1.5)
        assert model.calls == 1
        model.seconds = 0.0
        r = locate(c, chelsea, ["the cat"], heatmap_png=False)
        assert r.status_code == 200 and r.json()["results"][0]["point"] == [0, 0]


def test_inference_is_serialised(chelsea):
    active, peak = [0], [0]
    guard = threading.Lock()

    class Counting(SlowModel):
        def grounding_maps(self, images, phrases):
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.1)
            with guard:
                active[0] -= 1
            return torch.ones(1, len(phrases), 4, 4)

    app = create_app(ServeSettings(), loader=lambda s: LoadedModel(Predictor(Counting(0), 0.5, "counting")))
    with TestClient(app) as c:
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(locate(c, chelsea, ["x"]).status_code))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200] * 4 and peak[0] == 1


def test_server_keeps_serving_after_bad_requests(client, chelsea):
    bad = [
        locate(client, b"not an image", ["the cat"]),
        locate(client, chelsea[:1000], ["the cat"]),
        locate(client, chelsea, [""]),
        locate(client, chelsea, ["x" * 10_000]),
        locate(client, bytes(3 * 1024 * 1024), ["the cat"]),
        client.post("/api/locate", content=b"\x00garbage", headers={"content-type": "multipart/form-data"}),
        client.post("/api/locate", content=b"{}", headers={"content-type": "application/json"}),
    ]
    assert all(400 <= r.status_code < 500 for r in bad), [r.status_code for r in bad]
    assert client.get("/api/health").json()["status"] == "ok"
    r = locate(client, chelsea, ["the cat"], heatmap_png=False)
    assert r.status_code == 200 and r.json()["results"][0]["boxes"]


class PeakModel(SlowModel):
    """A 4x8 map whose only non-zero cell is (row 1, column 5), whatever the image."""

    def grounding_maps(self, images, phrases):
        maps = torch.zeros(1, len(phrases), 4, 8)
        maps[..., 1, 5] = 1.0
        return maps


def test_large_upload_is_worked_small_and_answered_in_the_photos_pixels():
    wide = Image.fromarray((np.random.default_rng(0).random((1000, 2000, 3)) * 255).astype(np.uint8))
    predictor = Predictor(PeakModel(0), 0.5, "peak")
    app = create_app(ServeSettings(work_side=500), loader=lambda s: LoadedModel(predictor))
    with TestClient(app) as c:
        r = locate(c, png_bytes(wide), ["x"], image_png="true")
    body = r.json()
    assert r.status_code == 200 and body["image"] == {"name": "photo.png", "width": 2000, "height": 1000}
    assert decode_png(body["image_png"]).size == (500, 250)  # what the model read: the 500 px working copy
    # The same map grounded on the full-size photo: the answers agree to within one working pixel (4 px here).
    full = predictor.locate_array(np.array(wide), ["x"])[0]
    result = body["results"][0]
    assert all(abs(a - b) <= 4 for a, b in zip(result["point"], full.point))
    assert len(result["boxes"]) == len(full.boxes) == 1
    assert all(abs(a - b) <= 4 for a, b in zip(result["boxes"][0], full.boxes[0]))
    assert 0 <= result["point"][0] < 2000 and 0 <= result["point"][1] < 1000


def test_admission_limit_is_503_with_retry_after(chelsea):
    model = SlowModel(0.8)
    app = create_app(ServeSettings(max_queue=1), loader=lambda s: LoadedModel(Predictor(model, 0.5, "slow")))
    with TestClient(app) as c:
        first = []
        worker = threading.Thread(target=lambda: first.append(locate(c, chelsea, ["x"], heatmap_png=False)))
        worker.start()
        deadline = time.monotonic() + 5
        while c.get("/api/health").json()["in_progress"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = locate(c, chelsea, ["x"])
        worker.join()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "--max-queue" in r.json()["detail"] and first[0].status_code == 200
        assert c.get("/api/health").json()["in_progress"] == 0
        assert locate(c, chelsea, ["x"], heatmap_png=False).status_code == 200  # the slot came back


def test_timed_out_work_stops_at_its_next_step_and_frees_its_slot(chelsea, monkeypatch):
    from weakground.serve import render

    drawn = []
    monkeypatch.setattr(render, "overlay_png", lambda *a, **k: drawn.append(1) or "")
    model = SlowModel(0.8)
    app = create_app(ServeSettings(timeout_s=0.3), loader=lambda s: LoadedModel(Predictor(model, 0.5, "slow")))
    with TestClient(app) as c:
        r = locate(c, chelsea, ["x", "y", "z"], overlay_png="true")
        assert r.status_code == 504
        health = c.get("/api/health").json()  # answered while the model is still busy with the timed-out job
        assert health["status"] == "ok" and health["in_progress"] == 1
        deadline = time.monotonic() + 5
        while c.get("/api/health").json()["in_progress"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/api/health").json()["in_progress"] == 0
        assert model.calls == 1 and drawn == []  # inference ran to its end; nothing after it did
        model.seconds = 0.0
        assert locate(c, chelsea, ["x"], overlay_png="true").status_code == 200 and drawn == [1]
