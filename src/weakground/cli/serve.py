"""``weakground serve``: the web page and JSON API (the `serve` extra: FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakground.errors import WeakgroundError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web app and JSON API: upload a photo, type phrases, see heatmaps, points, "
                       "boxes", description="Serve a page and a JSON API (POST /api/locate, GET /api/health, "
                       "GET /api/methods; typed schema at /openapi.json) that ground phrases in an "
                       "uploaded photo with the same model as `locate`. The model loads once at startup; concurrent "
                       "requests are micro-batched through it (--max-batch, --batch-wait-ms). Needs the `serve` extra: pip install 'weakground[serve]'.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--method", help="a method that needs no training (default: bridge), or the checkpoint's own")
    p.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint written by train")
    p.add_argument("--caption-checkpoint", type=Path, help="also serve POST /api/caption with this captioner's "
                   "checkpoint (ss_attention, updown)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                   help="largest image upload accepted, in MiB; larger ones get 413 (default: 10)")
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                   help="per-request limit on decoding + inference; past it the answer is 504 and the work "
                   "stops at its next step (default: 30)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests admitted at once, running or waiting for the model; one more gets 503 with "
                   "Retry-After (default: 16)")
    p.add_argument("--work-side", type=int, default=1024, metavar="PX",
                   help="uploads are decoded with their long side cut to PX pixels, so a 90 MP photo costs "
                   "what a 1 MP one does; answers stay in the photo's own pixels (default: 1024; bridge reads "
                   "448, trained methods their input size)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="concurrent requests run through the model in one call at most (bridge: their phrases in "
                   "one text-encoder call, equal-sized images in one image-encoder batch); 1 runs them one at "
                   "a time. Answers are the same either way, to float rounding (default: 8)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                   help="after a batch's first request, how long to wait for more before running it: latency "
                   "added to a lone request, at most (default: 5; 0 takes only what is already waiting)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise WeakgroundError(f"--port {args.port}: must lie in 0..65535")
    if not args.max_upload_mb > 0:
        raise WeakgroundError(f"--max-upload-mb {args.max_upload_mb:g}: must be > 0")
    if not args.timeout_s > 0:
        raise WeakgroundError(f"--timeout-s {args.timeout_s:g}: must be > 0")
    if args.max_queue < 1:
        raise WeakgroundError(f"--max-queue {args.max_queue}: must be >= 1")
    if args.max_batch < 1:
        raise WeakgroundError(f"--max-batch {args.max_batch}: must be >= 1")
    if not 0 <= args.batch_wait_ms <= 1000:
        raise WeakgroundError(f"--batch-wait-ms {args.batch_wait_ms:g}: must lie in 0..1000")
    if args.work_side < 64:
        raise WeakgroundError(f"--work-side {args.work_side}: must be >= 64 pixels")
    for path in (args.checkpoint, args.caption_checkpoint):
        if path is not None and not path.is_file():
            raise WeakgroundError(f"{path}: checkpoint file not found")
    import importlib
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise WeakgroundError(f"weakground serve needs the web extra ({', '.join(missing)} missing): "
                              "pip install 'weakground[serve]'")
    if args.checkpoint is None:  # a wrong name or a learned method fails here, in one line, not in the server log
        from weakground.methods import Grounder  # noqa: F401  (importing the package registers every method)
        from weakground.registry import METHODS

        name = args.method or "bridge"
        if METHODS.get(name).trainable:
            raise WeakgroundError(f"method {name!r} must be trained first: pass --checkpoint")
    from weakground.serve.app import ServeSettings, serve

    settings = ServeSettings(method=args.method, checkpoint=args.checkpoint, caption_checkpoint=args.caption_checkpoint,
                             timeout_s=args.timeout_s, max_queue=args.max_queue, work_side=args.work_side,
                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    try:
        serve(settings, host=args.host, port=args.port)
    except SystemExit as exc:  # uvicorn exits when it cannot bind the port or the model fails to load
        if exc.code not in (0, None):
            raise WeakgroundError(f"the server did not start on {args.host}:{args.port} (see the log above)") from None
    return 0
