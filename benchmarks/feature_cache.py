"""Frozen-feature caching: seconds per training epoch with and without the cache, in the same run.

    PYTHONPATH=src python benchmarks/feature_cache.py [--presets matchmap_cpu multilevel_cpu] [--epochs 3]
                                                      [--n-train N] [--pairs 20] [--quick]

For each frozen-encoder preset, on its own training images (the first ``--n-train`` of them; all by default):

* uncached: ``--epochs`` epochs of the shared trainer with ``train.cache_features=false`` (the frozen encoders
  run at every step);
* cached: the features computed once into an empty cache folder (``fill_seconds``: encoders over every image and
  every distinct caption, then the memory-mapped stores written), reopened as a later run would
  (``reopen_seconds``), then the same epochs from the same initial weights, reading the stores.

The speed-up is the mean uncached epoch over the mean cached epoch, epochs 2.. only (the first of each run also
pays one-off start-up work; the fill is timed apart, before the cached run's first epoch). On a machine shared
with other work epoch times swing with its load, so ``step_ms_interleaved`` also times single steps (loss and
backward) on the same batches, uncached and cached alternating (medians over ``--pairs``).
``max_abs_weight_diff`` is the largest difference between the two runs' final weights. Validation is left out
of both runs (it is not what the cache changes). Writes ``benchmarks/results/feature_cache.json`` with the
command and the machine; ``--quick`` (256 images, 2 epochs, 5 step pairs) checks the script in a few minutes and
writes ``feature_cache_quick.json`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakground.config import load_config
from weakground.engine.driver import machine_description
from weakground.engine.feature_cache import caption_features
from weakground.engine.tasks.caption_grounding import CaptionGrounding, CaptionTrainSet, caption_batches
from weakground.engine.trainer import Trainer, seed_everything
from weakground.methods import create_method

RESULTS = Path(__file__).parent / "results"


def _train(config: Any, train: CaptionTrainSet, timings: dict | None, run_dir: Path) -> tuple[list[float], dict]:
    """Epoch seconds and final weights of one run from seed 0 (the shared models are already loaded); with
    ``timings``, through the feature cache, whose cold fill and warm reopen are timed into it."""
    seed_everything(config.train.seed)
    model = create_method(config.method.name, config.backbone, [], config.method.params)
    features = None
    if timings is not None:
        for key in ("fill_seconds", "reopen_seconds"):  # computed into the empty cache, then opened from disk
            features = caption_features(model, train.images, train.captions, True, config.train.amp)
            t0 = time.perf_counter()
            features.fill()
            timings[key] = round(time.perf_counter() - t0, 2)
    size = config.train.batch_size
    result = Trainer(model, config.train, run_dir, {}, progress=False).fit(
        lambda rng: caption_batches(train, size, rng, features), len(train) // size)
    return [h["seconds"] for h in result["history"]], {k: v.clone() for k, v in model.state_dict().items()}


def step_times(config: Any, train: CaptionTrainSet, pairs: int) -> dict:
    """Median milliseconds of one training step (loss, backward) on the same batches without and with the cache,
    the two alternating step by step, so that load from other work on the machine hits both alike."""
    seed_everything(config.train.seed)
    model = create_method(config.method.name, config.backbone, [], config.method.params).train()
    features = caption_features(model, train.images, train.captions, True, config.train.amp)
    batches = list(caption_batches(train, config.train.batch_size, np.random.default_rng(0), features))
    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    for i in range(pairs + 1):  # the first pair warms up
        batch = batches[i % len(batches)]
        for name, b in (("uncached", {"images": batch["images"], "captions": batch["captions"]}), ("cached", batch)):
            t0 = time.perf_counter()
            model.loss(b)["total"].backward()
            model.zero_grad(set_to_none=True)
            if i:
                times[name].append((time.perf_counter() - t0) * 1000)
    plain, cached = float(np.median(times["uncached"])), float(np.median(times["cached"]))
    return {"uncached_ms": round(plain, 1), "cached_ms": round(cached, 1), "ratio": round(plain / cached, 2),
            "pairs": pairs}


def bench_preset(name: str, epochs: int, n_train: int | None, pairs: int, work: Path) -> dict:
    config = load_config(name)
    config.train.epochs, config.train.device = epochs, "cpu"
    data = CaptionGrounding().load_data(config, progress=False)  # the scenes live in the usual cache
    n = len(data.train) if n_train is None else min(n_train, len(data.train))
    train = CaptionTrainSet(data.train.images[:n], data.train.captions[:n], data.train.image_ids[:n])
    os.environ["WEAKGROUND_CACHE"] = str(work / name)  # an empty cache: the fill below is a cold one
    config.train.cache_features = False
    plain_epochs, plain = _train(config, train, None, work / f"{name}_plain")
    config.train.cache_features = True
    timings: dict = {}
    cached_epochs, cached = _train(config, train, timings, work / f"{name}_cached")
    steps_ms = step_times(config, train, pairs)  # the stores are filled by now
    later = slice(1, None) if epochs > 1 else slice(None)
    plain_later, cached_later = float(np.mean(plain_epochs[later])), float(np.mean(cached_epochs[later]))
    steps = len(train) // config.train.batch_size
    return {"n_train": n, "epochs": epochs, "steps_per_epoch": steps, "batch_size": config.train.batch_size,
            "uncached_epoch_seconds": plain_epochs, "cached_epoch_seconds": cached_epochs, **timings,
            "uncached_later_epoch_mean": round(plain_later, 2), "cached_later_epoch_mean": round(cached_later, 2),
            "speedup_later_epochs": round(plain_later / cached_later, 2),
            "images_per_second": {"uncached": round(steps * config.train.batch_size / plain_later, 1),
                                  "cached": round(steps * config.train.batch_size / cached_later, 1)},
            "step_ms_interleaved": steps_ms,
            "max_abs_weight_diff": max(float((plain[k] - cached[k]).abs().max()) for k in plain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["matchmap_cpu", "multilevel_cpu"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=None, help="the first N training images (default: all)")
    parser.add_argument("--pairs", type=int, default=20, help="interleaved step pairs timed")
    parser.add_argument("--quick", action="store_true", help="256 images, 2 epochs, 5 step pairs: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.epochs, args.pairs = args.n_train or 256, 2, 5
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from golden_runs import warm_shared_models  # tests/: load the shared encoders before any seeded build

    warm_shared_models()
    t0 = time.time()
    out: dict = {"command": "python benchmarks/feature_cache.py " + " ".join(sys.argv[1:]),
                 "machine": machine_description(), "presets": {}}
    with tempfile.TemporaryDirectory(prefix="feature_cache_") as tmp:
        for name in args.presets:
            print(f"{name} ...", flush=True)
            out["presets"][name] = row = bench_preset(name, args.epochs, args.n_train, args.pairs, Path(tmp))
            print(f"{name}: uncached {row['uncached_epoch_seconds']} s/epoch, cached {row['cached_epoch_seconds']} "
                  f"s/epoch after a {row['fill_seconds']} s fill: x{row['speedup_later_epochs']} on epochs 2.., "
                  f"x{row['step_ms_interleaved']['ratio']} per step (interleaved), "
                  f"final weights within {row['max_abs_weight_diff']:.2g}", flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("feature_cache_quick.json" if args.quick else "feature_cache.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} ({out['seconds']} s)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    main()
