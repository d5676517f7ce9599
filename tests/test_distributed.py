"""Data-parallel training under torchrun (issue 32): two CPU processes (gloo) train the same weights as one process
with the same global batch, ``--resume`` continues a distributed run, rank 0 alone writes and prints, and a batch
size the processes cannot split equally is a one-line error.

The tiny config is the captioner (``ss_attention``): its image side is the frozen EfficientNet-Lite0 (region
features computed before training, no BatchNorm trains) and with ``mu`` 0 and captions cut to 3 words its loss is
a mean over rows of equal token counts, i.e. a per-sample mean, the case in which the two runs must agree. SGD:
Adam divides by the root of tiny second moments, so a weight whose true gradient is zero (a bias under a softmax)
would follow the sign of rounding noise in either run (benchmarks/ddp_equivalence.py records that case too)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weakground.engine import distributed

TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_test_unseen=0", "data.image_size=64",
        "method.params.regions.max_regions=6", "method.params.hidden=16", "method.params.embed_dim=8",
        "method.params.attention_dim=8", "method.params.beam=1", "method.params.max_len=3",
        "method.params.dropout=0", "method.params.mu=0", "train.batch_size=8", "train.warmup_steps=0",
        "train.schedule=constant", "train.device=cpu", "train.optimizer=sgd", "train.lr=0.05"]


def _train(out: Path, cache: Path, processes: int, *sets: str, resume: bool = False) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if processes == 1 else [str(TORCHRUN), "--standalone", "--nproc_per_node",
                                                          str(processes)]
    args = [*launcher, "-m", "weakground", "train", "--preset", "ss_attention_cpu", "--out", str(out),
            "--no-progress", *(["--resume"] if resume else [])]
    for item in [*TINY, *sets]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEAKGROUND_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "train_last.safetensors")


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process for 2 epochs; two processes for 1 epoch, then resumed by two processes to 2 epochs."""
    tmp = tmp_path_factory.mktemp("ddp")
    cache = tmp / "cache"
    single = _train(tmp / "one", cache, 1, "train.epochs=2")
    assert single.returncode == 0, single.stderr[-2000:]
    first = _train(tmp / "two", cache, 2, "train.epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = _train(tmp / "two", cache, 2, "train.epochs=2", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return {"one": tmp / "one", "two": tmp / "two", "first": first, "resumed": resumed, "tmp": tmp}


def test_two_processes_train_the_single_process_weights(runs):
    one, two = _weights(runs["one"]), _weights(runs["two"])
    assert set(one) == set(two)
    diff = max(float((one[k].float() - two[k].float()).abs().max()) for k in one)
    assert diff < 1e-5, diff  # measured 1.5e-07 (weights and SGD momentum, 20 steps)
    assert "resumed train from" in runs["resumed"].stdout


def test_rank_zero_alone_logs_and_prints(runs):
    # Both ranks appending to one CSV would double its rows; each step row is there once and its global-batch
    # loss (the ranks' means, weighted by their rows) is the single process's.
    one, two = _log(runs["one"]), _log(runs["two"])
    assert [r["step"] for r in two] == [r["step"] for r in one] == ["10", "20"]
    for a, b in zip(one, two):
        assert float(a["total"]) == pytest.approx(float(b["total"]), abs=1e-6)
    assert runs["first"].stdout.count("train epoch 1/1") == 1
    assert runs["first"].stdout.count("checkpoint: ") == 1
    assert sorted(p.name for p in runs["two"].iterdir()) == sorted(p.name for p in runs["one"].iterdir())


def test_a_batch_the_processes_cannot_split_is_one_line(runs):
    out = runs["tmp"] / "odd"
    result = _train(out, runs["tmp"] / "cache", 2, "train.batch_size=7", "train.epochs=1")
    assert result.returncode != 0
    assert "weakground: error: train.batch_size 7 is not divisible by the 2 processes" in result.stderr
    assert "weakground/" not in result.stderr  # torchrun prints its own launcher's traceback, never one of ours
    assert not out.exists()


@pytest.mark.parametrize("rows, size, expected", [
    (8, 2, [(0, 4, 0.5), (4, 8, 0.5)]),
    (3, 2, [(0, 1, 1 / 3), (1, 3, 2 / 3)]),   # a short last batch: slices differ by one row
    (1, 2, [(0, 1, 0.0), (0, 1, 1.0)]),       # rank 0 has no row: it computes on row 0 and counts for nothing
])
def test_slices_cover_every_row_once_with_their_shares(rows, size, expected):
    bounds = [distributed.slice_bounds(rows, r, size) for r in range(size)]
    assert bounds == expected
    assert sum(share for _, _, share in bounds) == pytest.approx(1.0)


def test_a_single_process_is_left_as_it_is():
    batch = {"images": torch.zeros(3, 1), "captions": ["a", "b", "c"]}
    assert distributed.shard(batch) == (batch, 1.0)
    assert distributed.weighted_mean({"total": 2.0}, 1.0) == {"total": 2.0}
    distributed.check_batch_size(7, "train.batch_size")  # one process splits nothing
    assert distributed.is_main() and distributed.world_size() == 1
