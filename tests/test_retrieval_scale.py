"""benchmarks/retrieval_scale.py on a tiny gallery: the measurement code runs and reports what it claims (no timing
assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from benchmark_scripts import load_benchmark  # noqa: E402  (after the faiss skip)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("retrieval_scale")


def test_mixture_is_seeded_unit_vectors(bench):
    a = bench.mixture_on_sphere(300, 16, clusters=10, spread=0.5, seed=1)
    b = bench.mixture_on_sphere(300, 16, clusters=10, spread=0.5, seed=1)
    assert a.dtype == np.float32 and a.shape == (300, 16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a, bench.mixture_on_sphere(300, 16, clusters=10, spread=0.5, seed=2))


def test_benchmark_exact_and_hnsw_paths(bench):
    gallery = bench.mixture_on_sphere(5000, 32, clusters=50, spread=0.5, seed=1)
    queries = bench.mixture_on_sphere(40, 32, clusters=50, spread=0.5, seed=2)
    # faiss_from=1000 forces the project's HNSW index on the small gallery
    out = bench.benchmark(gallery, queries, ef_values=(16, 64), faiss_from=1000, exact_path_queries=40, threads=1)
    assert out["exact_path"]["recall@10"] == 1.0
    assert out["uses_faiss"] and out["index"]["type"] == "IndexHNSWFlat"
    assert out["index"]["M"] == 32
    assert [row["efSearch"] for row in out["sweep"]] == [16, 64]
    for row in out["sweep"] + [out["project_search"]]:
        assert 0.0 <= row["recall@10"] <= 1.0
        assert row["p50_ms"] <= row["p95_ms"]
    assert out["project_search"]["efSearch"] == 64  # NearestImages.search: max(64, 2k)
    for field in ("size", "dim", "queries", "build_s", "index_mb", "peak_rss_mb", "ground_truth_s"):
        assert field in out
    assert out["size"] == 5000 and out["index_mb"] > 0
    json.dumps(out)


def test_main_writes_json(bench, tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--size", "3000", "--dim", "16", "--queries", "20", "--clusters", "20", "--ef", "16",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].endswith("--out " + str(out))
    assert {"machine", "faiss", "data", "rows"} <= set(result)
    row = result["rows"][0]
    assert row["data"] == "mixture" and row["size"] == 3000
    assert row["uses_faiss"] is False  # below FAISS_MIN_GALLERY the project searches exactly
    assert row["exact_path"]["recall@10"] == 1.0
