"""The web app behind ``weakground serve``: a page and a JSON API that ground phrases in an uploaded photo.

Endpoints (the typed schema is at ``/openapi.json``; FastAPI's ``/docs`` and ``/redoc`` pages are switched off
because they load their scripts from a CDN, and this app works offline):

* ``GET /`` — the page (``static/index.html``, plain JS and CSS, no build step and nothing fetched from a CDN);
* ``POST /api/locate`` — multipart: ``image`` (a file) and one ``phrases`` field per phrase → per phrase the peak
  point, the boxes, the peak value, and a base64 PNG heatmap (and, on request, a drawn overlay);
* ``POST /api/caption`` — multipart ``image`` → a grounded caption (each object word with its box), when the
  server was started with ``--caption-checkpoint``;
* ``GET /api/health``, ``GET /api/methods``, ``GET /api/demo-photos`` (+ ``/{name}``: the bundled real photos).

Robustness, which the tests check one case at a time:

* the model is built once, in the lifespan handler (so importing this module loads nothing), and inference is
  serialised by a lock: one model, one batch at a time through it. Concurrent requests are micro-batched
  (:mod:`weakground.serve.batching`): one worker takes up to ``max_batch`` waiting requests, waiting at most
  ``batch_wait_ms`` for more, and runs them through the model in one call; the answers are each request's
  own, as if it had come alone (to float tolerance, ``tests/test_serve_batching.py``);
* a request body over the upload limit is refused with 413 as soon as its ``Content-Length`` says so, or as soon
  as the bytes received pass the limit (chunked uploads), before the rest is read;
* the image is decoded by :func:`weakground.io.read_image_bytes_bounded`, the same code as the CLI (EXIF
  rotation, CMYK, 16-bit, palette, transparency; truncated files and decompression bombs refused), shrunk to
  ``work_side`` while it is decoded, so a 90 MP upload never becomes a 90 MP float canvas, heatmap or PNG:
  points and boxes are mapped back to the photo's own pixels. Not an image → 415; empty, corrupt, too many
  pixels or too small for the method → 400, each with the reason;
* phrases are checked like the CLI's (empty, over :data:`weakground.engine.inference.MAX_PHRASE_CHARS`, too many) → 422;
* at most ``max_queue`` requests are admitted at once (running, or waiting for the model); one more gets 503
  with ``Retry-After`` at once, so a burst queues no unbounded work;
* each request's job thread decodes its upload outside the model lock, so decoding overlaps with inference,
  but one decode at a time (``LoadedModel.decode_slot``), so one full-size decode is in memory at a time; all
  under ``timeout_s``: past it the client gets 504 and the work stops at its next step (before decoding, after
  decoding, in the batch queue, after inference, between the pictures), freeing its worker;
* every error body is ``{"detail": "<one line>"}``, and no bad request leaves the server unable to answer.
"""

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from weakground.version import __version__
from weakground.errors import InputError, WeakgroundError
from weakground.serve.batching import Abandoned as _Abandoned

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_PHRASES = 16
# Multipart framing and the phrase fields ride on top of the image: the body limit allows for them.
FORM_OVERHEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """What ``weakground serve`` was started with."""

    method: str | None = None  # a method needing no training (default: bridge), or the checkpoint's own
    checkpoint: Path | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 30.0
    max_phrases: int = MAX_PHRASES
    caption_checkpoint: Path | None = None  # a captioner (ss_attention, updown) for POST /api/caption
    # Uploads are decoded with their long side cut to this (bridge reads 448 px, trained methods their input
    # size, so nothing they see changes) and every answer is mapped back to the photo's own pixels.
    work_side: int = 1024
    max_queue: int = 16  # requests admitted at once (running or waiting for the model); more get 503
    max_batch: int = 8  # requests run through the model in one call at most (1: one at a time)
    batch_wait_ms: float = 5.0  # after a batch's first request, how long the batch waits for more


@dataclass
class LoadedModel:
    """The predictor the server answers with (see :mod:`weakground.engine.inference`) and the lock that lets
    one request at a time through it."""

    predictor: Any
    load_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    captioner: Any = None  # a CaptionPredictor, when the server was started with one
    # Uploads are decoded outside the model lock, one at a time: the worst upload's decode (hundreds of MB
    # before it is cut to work_side) is never in memory twice.
    decode_slot: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))
    batcher: Any = None  # the MicroBatcher in front of the predictor, while the app runs

    @property
    def name(self) -> str:
        return self.predictor.name


def load_model(settings: ServeSettings) -> LoadedModel:
    """Build the served model exactly as ``weakground locate`` does (bridge by default, or a checkpoint's)."""
    from weakground.engine.inference import load

    start = time.perf_counter()
    predictor = load(settings.checkpoint if settings.checkpoint is not None else (settings.method or "bridge"),
                     method=settings.method if settings.checkpoint is not None else None, command="serve")
    captioner = None
    if settings.caption_checkpoint is not None:
        from weakground.engine.inference import load_captioner

        captioner = load_captioner(settings.caption_checkpoint)
    return LoadedModel(predictor, time.perf_counter() - start, captioner=captioner)


# ---- the typed API (these classes are what /openapi.json describes) ------------------------------------------


class ErrorResponse(BaseModel):
    detail: str = Field(description="one line saying what is wrong with the request", examples=[
        "phrase 2 is empty"])


class HealthResponse(BaseModel):
    status: Literal["ok"]
    method: str = Field(description="the method that answers /api/locate")
    version: str
    max_upload_bytes: int
    timeout_s: float
    max_phrases: int
    max_phrase_chars: int
    max_queue: int = Field(description="requests admitted at once; one more gets 503")
    in_progress: int = Field(description="requests admitted now (running, waiting for the model, or timed out "
                             "and not yet stopped)")
    work_side: int = Field(description="uploads are decoded with their long side cut to this many pixels; "
                           "coordinates are still the photo's own")
    max_batch: int = Field(description="concurrent requests run through the model in one call at most")
    batch_wait_ms: float = Field(description="how long a batch waits, after its first request, for more")
    batches: int = Field(description="model calls the batch queue has made since the server started")
    batched_requests: int = Field(description="requests those calls carried (batched_requests / batches: the "
                                  "mean batch size)")
    captioner: str | None = Field(None, description="the captioner behind POST /api/caption (null: none; start "
                                  "the server with --caption-checkpoint)")
    default_boxes: Literal["instance", "threshold"] = Field(description="the boxes /api/locate gives when none "
                                                            "are asked for")
    presence: bool = Field(description="True: answers carry a calibrated presence and a found verdict")


class MethodInfo(BaseModel):
    name: str
    trainable: bool = Field(description="True: the method needs a checkpoint (`weakground serve --checkpoint`)")
    served: bool = Field(description="True for the method this server answers with")


class MethodsResponse(BaseModel):
    served: str
    methods: list[MethodInfo]


class DemoPhoto(BaseModel):
    name: str
    url: str = Field(description="GET it for the image file")


class ImageInfo(BaseModel):
    name: str = Field(description="the uploaded file's name")
    width: int = Field(description="width in pixels after EXIF rotation; all coordinates refer to this frame")
    height: int


class PhraseResult(BaseModel):
    phrase: str
    point: tuple[int, int] = Field(description="(x, y): the pixel of the heatmap's peak, 0-based")
    peak: float = Field(description="the heatmap's maximum (method-specific scale; bridge maps peak at 1)")
    boxes: list[tuple[float, float, float, float]] = Field(
        description="xyxy in pixel edges (x2, y2 exclusive), best first: one per object grown from each peak "
                    "(instance boxes), or the regions at or above threshold x peak")
    box_scores: list[float]
    presence: float | None = Field(description="calibrated probability that the phrase is in the photo (null: "
                                   "the method has no calibration)")
    found: bool | None = Field(description="presence >= 0.5 (false: \"not found\"; the point, boxes and "
                               "heatmap are still given, for a look); always false for a flat map; null: "
                               "no calibration")
    heatmap_png: str | None = Field(None, description="base64 PNG: the map divided by its peak, jet colours, "
                                    "long side <= 640 px; draw it stretched over the image at ~45% opacity")
    overlay_png: str | None = Field(None, description="base64 PNG: image + heatmap + boxes + point (with "
                                    "overlay_png=true), long side <= 1024 px")


class LocateResponse(BaseModel):
    method: str
    boxes: Literal["instance", "threshold"] = Field(description="the kind of boxes given")
    threshold: float | None = Field(description="box threshold used, as a fraction of each map's peak "
                                    "(null for instance boxes)")
    image: ImageInfo
    results: list[PhraseResult]
    image_png: str | None = Field(None, description="base64 PNG of the image as the model read it (with "
                                  "image_png=true), long side <= 1024 px")
    elapsed_ms: float = Field(description="decode + inference + pictures, on the server")


class CaptionObject(BaseModel):
    word: str = Field(description="the object word as written")
    cls: str = Field(alias="class", description="its object class (the captioner's object vocabulary)")
    box: tuple[float, float, float, float] = Field(description="xyxy in the image's pixels: the region attended "
                                                   "most when the word was written")


class CaptionResponse(BaseModel):
    method: str
    caption: str
    objects: list[CaptionObject]
    image: ImageInfo
    elapsed_ms: float


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "the file is an image but cannot be used: empty, truncated or corrupt, too many pixels (possible "
             "decompression bomb) or too small for the method",
        413: "the upload is over the server's limit (`--max-upload-mb`)",
        415: "the file is not an image format the server can read",
        422: "a missing field, or a phrase that is empty, too long, or too many phrases",
        503: "the server already has `--max-queue` requests in progress; retry after `Retry-After` seconds",
        504: "decoding and inference took longer than the server's `--timeout-s`",
    }.items()}


# ---- the upload limit, enforced while the body streams in ------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class UploadLimitMiddleware:
    """413 for a request body over ``max_body`` bytes, decided before the body is read to its end."""

    def __init__(self, app: Any, max_body: int, max_upload_bytes: int) -> None:
        self.app, self.max_body, self.max_upload_bytes = app, max_body, max_upload_bytes

    async def _refuse(self, scope: Any, receive: Any, send: Any, size: str) -> None:
        detail = (f"upload is {size}; the limit is {self.max_upload_bytes / 2**20:g} MB "
                  f"(weakground serve --max-upload-mb)")
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self._refuse(scope, receive, send, f"{int(length) / 2**20:.1f} MB")
            return
        received, overflow = 0, False

        async def limited_receive() -> Any:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            if not overflow:  # the app's answer to a body cut short is replaced by the 413 below
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if overflow:
            await self._refuse(scope, receive, send,
                               f"over {self.max_body / 2**20:.1f} MB (sent without a Content-Length)")


# ---- the work done per request (in a worker thread) ------------------------------------------------------------


def check_phrases(phrases: list[str], max_phrases: int) -> list[str]:
    """The phrases as every door checks them (:func:`weakground.engine.inference.check_phrases`); HTTP 422
    with the reason."""
    from weakground.engine.inference import check_phrases as check

    if not phrases:
        raise HTTPException(422, "no phrase to ground: send one or more `phrases` fields")
    try:
        return check(phrases, max_phrases)
    except InputError as exc:
        raise HTTPException(422, str(exc)) from None


@dataclass
class _Job:
    """One admitted request's work: its deadline, and whether its client already has its answer (a 504)."""

    deadline: float
    abandoned: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Stop here (raise :class:`_Abandoned`) when the client has its 504 or the deadline has passed."""
        if self.abandoned.is_set() or time.monotonic() > self.deadline:
            raise _Abandoned

    def with_model(self, loaded: LoadedModel, work: Callable[[], Any]) -> Any:
        """``work()`` with the model to itself: a request queued behind another waits no longer than its own
        deadline, and one whose client already has its 504 does not spend the model at all."""
        if not loaded.lock.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
            raise _Abandoned
        try:
            self.check()
            return work()
        finally:
            loaded.lock.release()


class _Admission:
    """At most ``limit`` jobs at once, each on a worker thread of its own: one more is refused with 503 at the
    door instead of queueing unbounded work. A slot is freed when the job's thread is done (or the job never
    started), not when its client was answered, so a timed-out job still counts until it has stopped."""

    def __init__(self, limit: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.limit, self.active, self.guard = limit, 0, threading.Lock()
        self.workers = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="weakground-job")

    def submit(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        with self.guard:
            if self.active >= self.limit:
                raise HTTPException(503, f"the server is busy ({self.limit} requests in progress; weakground "
                                    "serve --max-queue): try again shortly", headers={"Retry-After": "1"})
            self.active += 1
        future = self.workers.submit(fn, *args)
        future.add_done_callback(self._release)  # runs on cancellation too
        return asyncio.wrap_future(future)

    def _release(self, _: Any) -> None:
        with self.guard:
            self.active -= 1


def _frame_scale(work_shape: tuple[int, ...], frame: tuple[int, int]) -> tuple[float, float]:
    """(x, y) factors from the decoded working copy's pixels to the photo's own."""
    return frame[0] / work_shape[1], frame[1] / work_shape[0]


def _to_frame(result: dict[str, Any], scale: tuple[float, float], frame: tuple[int, int]) -> dict[str, Any]:
    """One phrase's point and boxes moved from the working copy to the photo's pixels: box edges scale; the
    point is the photo pixel under the working pixel's centre."""
    (sx, sy), (width, height) = scale, frame
    x, y = result["point"]
    result["point"] = (min(width - 1, int((x + 0.5) * sx)), min(height - 1, int((y + 0.5) * sy)))
    result["boxes"] = [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in result["boxes"]]
    return result


def _result(image: Any, grounding: Any, want: dict[str, bool], job: _Job) -> dict[str, Any]:
    """One phrase's JSON, its pictures drawn on the working copy (with its own coordinates)."""
    from weakground.serve import render

    job.check()
    result = grounding.to_dict()
    result["point"], result["boxes"] = tuple(result["point"]), [tuple(b) for b in result["boxes"]]
    if want["heatmap_png"]:
        result["heatmap_png"] = render.heatmap_png(grounding.heatmap)
    if want["overlay_png"]:
        result["overlay_png"] = render.overlay_png(image, grounding.heatmap, grounding.point, result["boxes"])
    return result


async def _read_upload(image: UploadFile, settings: ServeSettings) -> tuple[bytes, str]:
    """The uploaded bytes and the file's bare name; 413 past the upload limit."""
    data = await image.read(settings.max_upload_bytes + 1)
    name = Path(image.filename or "upload").name or "upload"
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"{name}: over the {settings.max_upload_bytes / 2**20:g} MB upload limit "
                            "(weakground serve --max-upload-mb)")
    return data, name


async def _answer(work: Any, name: str, settings: ServeSettings, job: _Job) -> dict:
    """The worker's result within ``timeout_s`` (504 past it, the work then stopped); decode errors as 415/400."""
    try:
        return await asyncio.wait_for(work, timeout=settings.timeout_s)
    except (asyncio.TimeoutError, _Abandoned):
        job.abandoned.set()
        raise HTTPException(504, f"{name}: no answer within {settings.timeout_s:g} s (the server is busy or "
                            "the image is very large; weakground serve --timeout-s)") from None
    except InputError as exc:
        raise HTTPException(415 if getattr(exc, "kind", None) == "format" else 400, str(exc)) from None


def _decode_and(loaded: LoadedModel, data: bytes, name: str, channels: int, settings: ServeSettings, job: _Job,
                infer: Callable[[Any], Any]) -> tuple[Any, tuple[int, int], Any]:
    """Decode the upload (:func:`_decode`) and run ``infer`` on it with the model to itself (the caption
    route, which is not batched). Returns (working copy, the photo's (width, height), ``infer``'s)."""
    image, frame = _decode(loaded, data, name, channels, settings, job)

    def work() -> Any:
        found = infer(image)
        job.check()
        return found

    return image, frame, job.with_model(loaded, work)


def _decode(loaded: LoadedModel, data: bytes, name: str, channels: int, settings: ServeSettings, job: _Job
            ) -> tuple[Any, tuple[int, int]]:
    """The upload decoded (bounded to ``work_side``) in the decode slot, waiting for it no longer than the
    deadline: (working copy, the photo's (width, height))."""
    from weakground.io import read_image_bytes_bounded

    job.check()
    if not loaded.decode_slot.acquire(timeout=max(0.0, job.deadline - time.monotonic())):
        raise _Abandoned
    try:
        job.check()
        decoded = read_image_bytes_bounded(data, name, channels, max_side=settings.work_side)
    finally:
        loaded.decode_slot.release()
    job.check()
    return decoded


def _batch_maps(predictor: Any, images: list[Any], phrases: list[list[str]]) -> list[Any]:
    """The batch worker's call: decoded uint8 working copies -> per request (maps, raw presence or None). The
    float tensors are made here, in the batch, so a queued request holds only its uint8 copy (a quarter of the
    float one's memory)."""
    from weakground.io import image_to_tensor

    return predictor.maps_and_presence_many([image_to_tensor(image) for image in images], phrases)


def _locate(loaded: LoadedModel, data: bytes, name: str, phrases: list[str], rule: Any,
            want: dict[str, bool], settings: ServeSettings, job: _Job) -> dict:
    from weakground.serve import render

    start = time.perf_counter()
    predictor = loaded.predictor
    image, frame = _decode(loaded, data, name, predictor.channels, settings, job)
    maps, raw = loaded.batcher.maps(image, phrases, job.deadline, job.abandoned)
    job.check()
    found = predictor.ground(image, maps[0], phrases, rule, None if raw is None else raw[0].tolist())
    scale = _frame_scale(image.shape, frame)
    results = [_to_frame(_result(image, g, want, job), scale, frame) for g in found]
    job.check()
    return {"method": loaded.name, "boxes": rule.kind,
            "threshold": rule.threshold if rule.kind == "threshold" else None,
            "image": {"name": name, "width": frame[0], "height": frame[1]}, "results": results,
            "image_png": render.image_png(image) if want["image_png"] else None,
            "elapsed_ms": round(1000 * (time.perf_counter() - start), 1)}


# ---- the app ---------------------------------------------------------------------------------------------------


async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def create_app(settings: ServeSettings | None = None,
               loader: Callable[[ServeSettings], LoadedModel] = load_model) -> FastAPI:
    """The FastAPI app. ``loader`` builds the model once at startup (tests pass one that reuses a model)."""
    settings = settings or ServeSettings()
    state: dict[str, LoadedModel] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        from weakground.serve.batching import MicroBatcher

        loaded = await asyncio.to_thread(loader, settings)
        loaded.batcher = MicroBatcher(functools.partial(_batch_maps, loaded.predictor), loaded.lock,
                                      settings.max_batch, settings.batch_wait_ms / 1000)
        state["model"] = loaded
        import logging

        logging.getLogger("uvicorn.error").info("weakground: method %r ready (loaded in %.1f s)", loaded.name,
                                                loaded.load_s)
        yield
        state.clear()
        loaded.batcher.close()
        admission.workers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="weakground", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Weakly supervised visual grounding: point phrases at a photo. `POST /api/locate` "
                  "with an image and phrases; each phrase comes back as a peak point, boxes and a heatmap.")
    app.add_middleware(UploadLimitMiddleware, max_body=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
                       max_upload_bytes=settings.max_upload_bytes)

    app.exception_handler(RequestValidationError)(one_line_validation_error)

    def served() -> LoadedModel:
        if "model" not in state:
            raise HTTPException(503, "the model is not loaded yet")
        return state["model"]

    admission = _Admission(settings.max_queue)
    _add_info_routes(app, settings, served, admission)
    _add_locate_route(app, settings, served, admission)
    _add_caption_route(app, settings, served, admission)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_info_routes(app: FastAPI, settings: ServeSettings, served: Callable[[], LoadedModel],
                     admission: _Admission) -> None:
    """The page, health, the method list and the bundled demo photos."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/health", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def health() -> HealthResponse:
        from weakground.engine.inference import MAX_PHRASE_CHARS

        loaded = served()
        return HealthResponse(status="ok", method=loaded.name, version=__version__,
                              max_upload_bytes=settings.max_upload_bytes, timeout_s=settings.timeout_s,
                              max_phrases=settings.max_phrases, max_phrase_chars=MAX_PHRASE_CHARS,
                              default_boxes=loaded.predictor.default_boxes,
                              presence=loaded.predictor.calibration is not None,
                              max_queue=settings.max_queue, work_side=settings.work_side,
                              max_batch=settings.max_batch, batch_wait_ms=settings.batch_wait_ms,
                              batches=loaded.batcher.batches, batched_requests=loaded.batcher.batched_requests,
                              in_progress=admission.active,
                              captioner=loaded.captioner.model.name if loaded.captioner is not None else None)

    @app.get("/api/methods", response_model=MethodsResponse)
    async def methods() -> MethodsResponse:
        from weakground.methods import Grounder  # importing the package registers every method
        from weakground.registry import METHODS

        name = served().name
        return MethodsResponse(served=name, methods=[
            MethodInfo(name=n, trainable=METHODS.get(n).trainable, served=n == name) for n in METHODS.names()
            if issubclass(METHODS.get(n), Grounder)])

    @app.get("/api/demo-photos", response_model=list[DemoPhoto])
    async def demo_photos() -> list[DemoPhoto]:
        from weakground.data.demo_photos import demo_photo_names

        return [DemoPhoto(name=n, url=f"/api/demo-photos/{n}") for n in demo_photo_names()]

    @app.get("/api/demo-photos/{name}", response_class=FileResponse, responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {"model": ErrorResponse}})
    async def demo_photo(name: str) -> FileResponse:
        from weakground.data.demo_photos import demo_photo_names, demo_photo_path

        if name not in demo_photo_names():
            raise HTTPException(404, f"unknown demo photo {name!r}")
        try:
            path = demo_photo_path(name)
        except WeakgroundError as exc:
            raise HTTPException(404, str(exc)) from None
        return FileResponse(path, filename=f"{name}{path.suffix}", content_disposition_type="inline")


def _caption(loaded: LoadedModel, data: bytes, name: str, settings: ServeSettings, job: _Job) -> dict:
    start = time.perf_counter()
    image, frame, result = _decode_and(loaded, data, name, 3, settings, job, loaded.captioner.caption)
    sx, sy = _frame_scale(image.shape, frame)
    objects = [{**obj, "box": [obj["box"][0] * sx, obj["box"][1] * sy, obj["box"][2] * sx, obj["box"][3] * sy]}
               for obj in result.objects]
    return {"method": loaded.captioner.model.name, "caption": result.caption, "objects": objects,
            "image": {"name": name, "width": frame[0], "height": frame[1]},
            "elapsed_ms": round(1000 * (time.perf_counter() - start), 1)}


def _add_caption_route(app: FastAPI, settings: ServeSettings, served: Callable[[], LoadedModel],
                       admission: _Admission) -> None:
    """``POST /api/caption``: a grounded caption, when the server was started with ``--caption-checkpoint``."""

    @app.post("/api/caption", response_model=CaptionResponse, response_model_by_alias=True,
              responses={**ERRORS, 404: {"model": ErrorResponse, "description": "the server has no captioner"}})
    async def caption(image: Annotated[UploadFile, File(description="the photo")]) -> CaptionResponse:
        loaded = served()
        if loaded.captioner is None:
            raise HTTPException(404, "this server has no captioner: start it with weakground serve "
                                "--caption-checkpoint FILE")
        data, name = await _read_upload(image, settings)
        job = _Job(time.monotonic() + settings.timeout_s)
        work = admission.submit(_caption, loaded, data, name, settings, job)
        return CaptionResponse(**await _answer(work, name, settings, job))


def _add_locate_route(app: FastAPI, settings: ServeSettings, served: Callable[[], LoadedModel],
                      admission: _Admission) -> None:
    """``POST /api/locate``: decode and ground in a worker thread, under the request's deadline."""

    @app.post("/api/locate", response_model=LocateResponse, responses=ERRORS)
    async def locate(
        image: Annotated[UploadFile, File(description="the photo: PNG, JPEG, TIFF, WebP, GIF, BMP, ...")],
        phrases: Annotated[list[str], Form(description="the phrases to ground: repeat the field once per "
                                           "phrase; any language the text encoder knows (e.g. \"café table\")")],
        threshold: Annotated[float | None, Form(ge=0.0, le=1.0, description="box threshold as a fraction of "
                                                "each map's peak (default: the method's); asks for threshold "
                                                "boxes")] = None,
        boxes: Annotated[Literal["instance", "threshold"] | None, Form(
            description="`instance`: one box per object, grown from each peak; `threshold`: the regions at or "
                        "above threshold x peak (default: the method's, see /api/health)")] = None,
        heatmap_png: Annotated[bool, Form(description="return each phrase's heatmap as PNG")] = True,
        overlay_png: Annotated[bool, Form(description="return each phrase's drawn overlay as PNG")] = False,
        image_png: Annotated[bool, Form(description="return the decoded image as PNG (what the model saw: "
                                        "EXIF-rotated, 8-bit)")] = False,
    ) -> LocateResponse:
        loaded = served()
        phrases = check_phrases(phrases, settings.max_phrases)
        try:
            rule = loaded.predictor.box_rule(threshold, boxes)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        data, name = await _read_upload(image, settings)
        job = _Job(time.monotonic() + settings.timeout_s)
        want = {"heatmap_png": heatmap_png, "overlay_png": overlay_png, "image_png": image_png}
        work = admission.submit(_locate, loaded, data, name, phrases, rule, want, settings, job)
        return LocateResponse(**await _answer(work, name, settings, job))


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted (what ``weakground serve`` calls)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
