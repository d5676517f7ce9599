"""Retrieval at scale: the project's gallery index (``weakground.engine.retrieval.NearestImages``) over a synthetic
gallery of up to 1,000,000 unit vectors.

    PYTHONPATH=src python benchmarks/retrieval_scale.py [--size 1000000] [--dim 512] [--queries 1000]

* data: a seeded mixture of Gaussians on the sphere — ``--clusters`` random unit centres, each point
  ``normalise(centre + spread * g)`` with ``g ~ N(0, I/dim)`` (so ``|spread * g| ~ spread``); queries are fresh draws
  from the same mixture, not gallery rows. ``--uniform-size`` adds a second, stated row of uniformly random unit
  vectors (no structure: the worst case for any ANN index, and unlike real embeddings).
* index: ``NearestImages(embeddings)`` itself — FAISS ``IndexHNSWFlat(dim, HNSW_NEIGHBOURS, METRIC_INNER_PRODUCT)``
  with FAISS's default efConstruction at and above ``FAISS_MIN_GALLERY`` rows, an exact matrix product below.
  Build time is the constructor's wall time (FAISS uses all OpenMP threads for ``add``).
* ground truth: ``faiss.IndexFlatIP`` over the whole gallery (exact), queried in chunks.
* sweep: for each efSearch, recall@k against the exact top-k and single-query latency (one query per
  ``index.search`` call, ``faiss.omp_set_num_threads(1)``), p50/p95; plus batched throughput (all queries in one
  call, all threads). One row times the project's own ``NearestImages.search`` (which sets efSearch to
  ``max(64, 2k)``), and one the exact small-gallery path (torch matrix product) on a few queries.
* memory: the index's serialised size (``len(faiss.serialize_index(index))``) and the process's peak RSS.

Writes ``benchmarks/results/retrieval_scale.json`` with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from weakground.engine.driver import machine_description
from weakground.engine.retrieval import FAISS_MIN_GALLERY, HNSW_NEIGHBOURS, NearestImages

RESULTS = Path(__file__).parent / "results"
EF_SEARCH = (16, 32, 64, 128, 256)
K = 10


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: KiB


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def mixture_on_sphere(n: int, dim: int, clusters: int, spread: float, seed: int, centre_seed: int = 0,
                      chunk: int = 100_000) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors from a mixture of ``clusters`` Gaussians on the sphere.

    The centres depend only on ``centre_seed`` (so gallery and queries share them); the draws on ``seed``."""
    centres = _normalise(np.random.default_rng(centre_seed).standard_normal((clusters, dim), dtype=np.float32))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        out[start:start + m] = _normalise(centres[rng.integers(0, clusters, m)] + noise)
    return out


def uniform_on_sphere(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        out[start:start + m] = _normalise(rng.standard_normal((m, dim), dtype=np.float32))
    return out


def exact_top_k(gallery: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """``[Q, k]`` row indices of the exact inner-product top-k (``faiss.IndexFlatIP``), queried in chunks."""
    import faiss

    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    rows = np.concatenate([flat.search(queries[i:i + chunk], k)[1] for i in range(0, len(queries), chunk)])
    del flat
    return rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return round(hits / (k * len(truth)), 4)


def _latency(samples: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p95_ms": round(float(np.percentile(arr, 95)), 3),
            "mean_ms": round(float(arr.mean()), 3)}


def benchmark(gallery: np.ndarray, queries: np.ndarray, k: int = K, ef_values: Sequence[int] = EF_SEARCH,
              faiss_from: int = FAISS_MIN_GALLERY, exact_path_queries: int = 20,
              threads: int | None = None) -> dict[str, Any]:
    """Build the project's index over ``gallery`` and measure it against exact search with ``queries``.

    ``faiss_from`` is passed to ``NearestImages`` (the project's threshold by default; a test may lower it to
    force HNSW on a small gallery). Returns a JSON-ready dict."""
    import faiss

    threads = threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    n, dim = gallery.shape
    out: dict[str, Any] = {"size": n, "dim": dim, "queries": len(queries), "k": k}

    _log(f"exact ground truth: IndexFlatIP over {n:,} x {dim}, {len(queries)} queries")
    t = time.perf_counter()
    truth = exact_top_k(gallery, queries, k)
    out["ground_truth_s"] = round(time.perf_counter() - t, 2)

    # the project's exact path (torch matrix product, what NearestImages does below faiss_from), a few queries
    exact = NearestImages(torch.from_numpy(gallery), faiss_from=n + 1)
    m = min(exact_path_queries, len(queries))
    found, times = [], []
    for i in range(m):
        q = torch.from_numpy(queries[i:i + 1])
        t = time.perf_counter()
        found.append(exact.search(q, k)[1].numpy()[0])
        times.append(time.perf_counter() - t)
    out["exact_path"] = {"queries": m, "torch_threads": torch.get_num_threads(),
                         f"recall@{k}": recall_at_k(np.stack(found), truth[:m]), **_latency(times)}
    del exact

    _log(f"build: NearestImages over {n:,} rows (HNSW M={HNSW_NEIGHBOURS} from {faiss_from:,} rows, "
         f"{threads} OpenMP threads)")
    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    searcher = NearestImages(torch.from_numpy(gallery), faiss_from=faiss_from)
    out["build_s"] = round(time.perf_counter() - t, 2)
    out["uses_faiss"] = searcher.uses_faiss
    _log(f"built in {out['build_s']} s")
    if not searcher.uses_faiss:
        out["peak_rss_mb"] = _peak_rss_mb()
        return out
    index = searcher.index
    out["index"] = {"type": type(index).__name__, "M": HNSW_NEIGHBOURS, "efConstruction": int(index.hnsw.efConstruction),
                    "max_level": int(index.hnsw.max_level)}

    sweep = []
    for ef in ef_values:
        index.hnsw.efSearch = ef
        faiss.omp_set_num_threads(1)
        found = np.empty((len(queries), k), dtype=np.int64)
        times = []
        for i in range(len(queries)):
            q = queries[i:i + 1]
            t = time.perf_counter()
            found[i] = index.search(q, k)[1][0]
            times.append(time.perf_counter() - t)
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        batched = index.search(queries, k)[1]
        batch_s = time.perf_counter() - t
        row = {"efSearch": ef, f"recall@{k}": recall_at_k(found, truth),
               f"recall@{k}_batched": recall_at_k(batched, truth), **_latency(times),
               "batched_qps": round(len(queries) / batch_s, 1)}
        sweep.append(row)
        _log(f"efSearch {ef}: recall@{k} {row[f'recall@{k}']}, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
             f"batched {row['batched_qps']} q/s")
    out["sweep"] = sweep
    out["single_query_threads"] = 1
    out["batched_threads"] = threads

    # the project's own search call (efSearch = max(64, 2k), torch <-> numpy conversions included)
    faiss.omp_set_num_threads(1)
    found, times = [], []
    for i in range(len(queries)):
        q = torch.from_numpy(queries[i:i + 1])
        t = time.perf_counter()
        found.append(searcher.search(q, k)[1].numpy()[0])
        times.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    out["project_search"] = {"efSearch": int(index.hnsw.efSearch), f"recall@{k}": recall_at_k(np.stack(found), truth),
                             **_latency(times)}
    out["peak_rss_mb"] = _peak_rss_mb()  # before serialising, which copies the index once more
    out["peak_rss_mb_before_build"] = rss_before
    out["index_mb"] = round(len(faiss.serialize_index(index)) / 2**20, 1)
    out["gallery_mb"] = round(gallery.nbytes / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="gallery rows (mixture of Gaussians)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (dsve_loc/matchmap default: 512)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--uniform-size", type=int, default=0, help="also run uniform random vectors (0: skip)")
    parser.add_argument("--ef", type=int, nargs="+", default=list(EF_SEARCH))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval_scale.json")
    args = parser.parse_args(argv)
    import faiss

    result: dict[str, Any] = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine_description(), "faiss": faiss.__version__, "cpu_count": os.cpu_count(),
        "index": f"weakground.engine.retrieval.NearestImages (IndexHNSWFlat M={HNSW_NEIGHBOURS}, inner product, "
                 f"HNSW from {FAISS_MIN_GALLERY:,} rows)",
        "goal": f"p50 < 10 ms at recall@{K} >= 0.95 on 1,000,000 vectors",
        "data": {"mixture": {"clusters": args.clusters, "spread": args.spread, "centre_seed": 0,
                             "gallery_seed": args.seed + 1, "query_seed": args.seed + 2},
                 "uniform_seeds": {"gallery": args.seed + 3, "query": args.seed + 4}},
        "rows": []}

    _log(f"mixture gallery: {args.size:,} x {args.dim}, {args.clusters} clusters, spread {args.spread}")
    gallery = mixture_on_sphere(args.size, args.dim, args.clusters, args.spread, seed=args.seed + 1)
    queries = mixture_on_sphere(args.queries, args.dim, args.clusters, args.spread, seed=args.seed + 2)
    result["rows"].append({"data": "mixture", **benchmark(gallery, queries, ef_values=args.ef)})
    del gallery, queries
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    if args.uniform_size:
        _log(f"uniform gallery: {args.uniform_size:,} x {args.dim}")
        gallery = uniform_on_sphere(args.uniform_size, args.dim, seed=args.seed + 3)
        queries = uniform_on_sphere(args.queries, args.dim, seed=args.seed + 4)
        result["rows"].append({"data": "uniform", **benchmark(gallery, queries, ef_values=args.ef)})
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
