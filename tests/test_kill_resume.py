"""Kill a tiny training run anywhere in a checkpoint save, resume it, and get the uninterrupted run's weights
(issue 30): the ``WEAKGROUND_KILL_AT`` hook stops the process between the parts of a save, a parent's SIGKILL at
a random moment stops it anywhere; a damaged ``last`` resumes from ``prev`` with one warning line, and both damaged
is a one-line error.

Every run is a subprocess with one torch thread, so the uninterrupted reference and the killed-and-resumed runs do
the same arithmetic and their tensors must be equal bit for bit."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weakground.engine.checkpoint import KILL_ENV, KILL_POINTS, stored_meta

EPOCHS = 8
TINY = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "backbone.widths=[4,8,8,8]", "backbone.blocks=[1,1,1,1]",
        "method.params.mcb_dim=32", "method.params.hidden=4", "pretrain.enabled=false", f"train.epochs={EPOCHS}",
        "train.batch_size=16", "train.warmup_steps=2", "eval.batch_size=8", "eval.threshold_candidates=[0.5]"]
# Each kill is the hook's first arrival at its point in that process; the first run is a fresh one, the rest resume.
HOOK_KILLS = [f"{point}:1" for point in KILL_POINTS]


def _start(run_dir: Path, resume: bool, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    args = [sys.executable, "-m", "weakground", "train", "--out", str(run_dir), "--no-progress"]
    args += ["--resume"] if resume else []
    for setting in TINY:
        args += ["--set", setting]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = run_dir / "checkpoints"
    return {name: load_file(str(folder / f"train_{name}.safetensors")) for name in ("last", "best")}


def _assert_same_tensors(got: dict[str, dict[str, torch.Tensor]], want: dict[str, dict[str, torch.Tensor]]) -> None:
    for name in want:
        assert set(got[name]) == set(want[name]), name
        different = [k for k in want[name] if not torch.equal(got[name][k], want[name][k])]
        assert not different, f"train_{name}: {len(different)} tensors differ from the uninterrupted run's, e.g. {different[0]}"


def _assert_tidy(run_dir: Path) -> None:
    """No temporaries left, each .json copy describes its file, the step log equals an uninterrupted one's."""
    folder = run_dir / "checkpoints"
    assert not list(folder.glob(".*.tmp"))
    for name in ("last", "best"):
        meta = stored_meta(folder / f"train_{name}.safetensors")
        meta.pop("optimizer_layout", None)
        assert json.loads((folder / f"train_{name}.json").read_text()) == meta


def _log_steps(run_dir: Path) -> list[str]:
    return [line.split(",")[1] for line in (run_dir / "train_log.csv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    code, _, err = _finish(_start(run_dir, resume=False))
    assert code == 0, err
    return run_dir


def test_killed_at_every_save_point_and_at_random_resumes_to_the_uninterrupted_weights(tmp_path, reference):
    run_dir = tmp_path / "killed"
    for i, kill_at in enumerate(HOOK_KILLS):
        code, out, err = _finish(_start(run_dir, resume=i > 0, kill_at=kill_at))
        assert code == -signal.SIGKILL, f"{kill_at} did not kill the run (exit {code}): {err[-2000:]}"
    # A SIGKILL from outside at a random moment of an epoch (seeded: the same moment each run of the suite).
    proc = _start(run_dir, resume=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("train epoch"):
            time.sleep(random.Random(30).uniform(0.0, 0.3))
            break
    proc.kill()
    _finish(proc)
    code, out, err = _finish(_start(run_dir, resume=True))
    assert code == 0, err[-2000:]
    assert "resumed train" in out
    _assert_same_tensors(_tensors(run_dir), _tensors(reference))
    _assert_tidy(run_dir)
    assert _log_steps(run_dir) == _log_steps(reference)  # each step once, in order
    assert (run_dir / "report.json").is_file()


def _damaged_copy(reference: Path, tmp_path: Path, *names: str) -> Path:
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference, run_dir)
    for name in names:
        path = run_dir / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return run_dir


def test_a_damaged_last_resumes_from_prev_with_one_warning(tmp_path, reference):
    run_dir = _damaged_copy(reference, tmp_path, "train_last.safetensors")
    code, out, err = _finish(_start(run_dir, resume=True))
    assert code == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "train_last.safetensors" in warnings[0] and "train_last.prev.safetensors" in warnings[0]
    assert "not a readable safetensors checkpoint" in warnings[0]
    assert f"after epoch {EPOCHS - 1}" in out and f"train epoch {EPOCHS}/{EPOCHS}" in out  # the last epoch again
    _assert_same_tensors(_tensors(run_dir), _tensors(reference))
    _assert_tidy(run_dir)
    assert _log_steps(run_dir) == _log_steps(reference)  # truncated to the epoch resumed from, then rewritten


def test_both_damaged_is_a_one_line_error(tmp_path, reference):
    run_dir = _damaged_copy(reference, tmp_path, "train_last.safetensors", "train_last.prev.safetensors")
    code, out, err = _finish(_start(run_dir, resume=True))
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("weakground: error: cannot resume:")
    assert "train_last.safetensors" in lines[0] and "train_last.prev.safetensors" in lines[0]
