"""Kill tiny training runs at random, resume each to completion, and count what went wrong (issue 30).

    python benchmarks/reliability_kills.py [--kills 50] [--seed 0] [--out benchmarks/results/reliability_kills.json]

Each run trains a tiny multi-MNIST config (8 epochs of 4 steps, a few seconds a process) in a subprocess and is
killed 1-3 times, each time either by the ``WEAKGROUND_KILL_AT`` hook at a random save point and occurrence, or by
a SIGKILL from here after a random delay; after each kill it is resumed with ``--resume`` until a process exits 0.
The final ``last`` and ``best`` checkpoints must equal, tensor for tensor (optimizer state included), those of one
uninterrupted run. Every process uses one torch thread, so the arithmetic is the same in all of them.

Counted: kills (processes that died by SIGKILL), resumes, fallbacks to ``<stage>_last.prev`` (the warning line),
silent mixed resumes (a run that finished but whose weights differ from the reference: the failure this guards
against), unloadable checkpoints (a resume that failed, or a final checkpoint that cannot be read), leftover
``.tmp`` files and duplicated (or missing) step-log rows. Exits 1 on any silent mixed resume or unloadable checkpoint.
Writes ``benchmarks/results/reliability_kills.json`` with the command and machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from weakground.engine.checkpoint import KILL_ENV, KILL_POINTS, read_checkpoint
from weakground.engine.driver import machine_description
from weakground.errors import CheckpointError

RESULTS = Path(__file__).resolve().parent / "results"
EPOCHS = 8
TINY = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "backbone.widths=[4,8,8,8]", "backbone.blocks=[1,1,1,1]",
        "method.params.mcb_dim=32", "method.params.hidden=4", "pretrain.enabled=false", f"train.epochs={EPOCHS}",
        "train.batch_size=16", "train.warmup_steps=2", "eval.batch_size=8", "eval.threshold_candidates=[0.5]"]


def train(run_dir: Path, resume: bool, kill_at: str | None = None, kill_after_s: float | None = None
          ) -> tuple[int, str, str]:
    """One ``weakground train`` process; returns (exit code, stdout, stderr). A negative code is the signal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    args = [sys.executable, "-m", "weakground", "train", "--out", str(run_dir), "--no-progress"]
    args += ["--resume"] if resume else []
    for setting in TINY:
        args += ["--set", setting]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(kill_after_s, proc.send_signal, (signal.SIGKILL,)) if kill_after_s is not None else None
    if timer is not None:
        timer.start()
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if timer is not None:
            timer.cancel()
    return proc.returncode, out, err


def _tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = run_dir / "checkpoints"
    return {name: load_file(str(folder / f"train_{name}.safetensors")) for name in ("last", "best")}


def _same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(set(a[n]) == set(b[n]) and all(torch.equal(a[n][k], b[n][k]) for k in b[n]) for n in b)


def _log_steps(run_dir: Path) -> list[str]:
    path = run_dir / "train_log.csv"
    return [line.split(",")[1] for line in path.read_text().splitlines()[1:]] if path.is_file() else []


def _random_kill(rng: random.Random, wall_s: float) -> dict[str, Any]:
    if rng.random() < 0.6:
        point = rng.choice(KILL_POINTS)
        return {"kind": "hook", "kill_at": f"{point}:{rng.randint(1, EPOCHS)}", "point": point}
    return {"kind": "signal", "kill_after_s": round(rng.uniform(0.0, wall_s), 3), "point": "random-time"}


def one_run(index: int, seed: int, wall_s: float, reference: dict, ref_steps: list[str], root: Path) -> dict[str, Any]:
    """Kill one run 1-3 times at random, resume it to completion, and check it against the reference."""
    rng = random.Random(seed * 1_000_003 + index)
    run_dir = root / f"run{index:03d}"
    counts: collections.Counter = collections.Counter()
    events, resume = [], False
    for _ in range(rng.randint(1, 3)):
        kill = _random_kill(rng, wall_s)
        code, _, err = train(run_dir, resume, kill.get("kill_at"), kill.get("kill_after_s"))
        counts["resumes"] += resume
        counts["fallbacks_to_prev"] += sum("resuming from the previous checkpoint" in line for line in err.splitlines())
        resume = True
        events.append({**kill, "exit": code})
        if code == -signal.SIGKILL:
            counts["kills"] += 1
            counts[f"kills_at/{kill['point']}"] += 1
        elif code == 0:
            counts["kills_not_reached"] += 1  # the point or the moment came after the run had finished
        else:
            counts["unloadable_checkpoints"] += 1
            events[-1]["stderr"] = err.strip().splitlines()[-1:]
    code, _, err = train(run_dir, resume)
    counts["resumes"] += 1
    counts["fallbacks_to_prev"] += sum("resuming from the previous checkpoint" in line for line in err.splitlines())
    if code != 0:
        counts["unloadable_checkpoints"] += 1
        events.append({"kind": "final", "exit": code, "stderr": err.strip().splitlines()[-1:]})
        return {"counts": counts, "events": events}
    try:
        for name in ("last", "best"):
            read_checkpoint(run_dir / "checkpoints" / f"train_{name}.safetensors")
        counts["silent_mixed_resumes"] += not _same(_tensors(run_dir), reference)
    except CheckpointError:
        counts["unloadable_checkpoints"] += 1
    counts["leftover_tmp_files"] += len(list((run_dir / "checkpoints").glob(".*.tmp")))
    counts["duplicated_log_rows"] += _log_steps(run_dir) != ref_steps
    return {"counts": counts, "events": events}


def benchmark(kills: int, seed: int, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.time()
        code, _, err = train(root / "reference", resume=False)
        if code != 0:
            sys.exit(f"error: the uninterrupted reference run failed: {err.strip().splitlines()[-1:]}")
        wall_s = time.time() - t0
        reference, ref_steps = _tensors(root / "reference"), _log_steps(root / "reference")
        totals: collections.Counter = collections.Counter()
        runs: list[dict[str, Any]] = []
        index = 0
        with ThreadPoolExecutor(workers) as pool:
            while totals["kills"] < kills:  # a batch of runs at a time until enough kills have landed
                batch = [pool.submit(one_run, index + i, seed, wall_s, reference, ref_steps, root) for i in range(workers)]
                index += workers
                for future in batch:
                    result = future.result()
                    totals.update(result["counts"])
                    runs.append(result)
    return {"reference_run_seconds": round(wall_s, 2), "runs": len(runs), "totals": dict(sorted(totals.items())),
            "events": [r["events"] for r in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50, help="stop once this many kills have landed (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one torch thread each (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability_kills.json")
    args = parser.parse_args(argv)
    t0 = time.time()
    found = benchmark(args.kills, args.seed, args.workers)
    totals = found["totals"]
    result = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
              "config": TINY, "kill_points": list(KILL_POINTS), **found, "seconds": round(time.time() - t0, 1),
              "machine": machine_description()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("kills", "resumes", "fallbacks_to_prev", "silent_mixed_resumes", "unloadable_checkpoints",
            "leftover_tmp_files", "duplicated_log_rows")
    print(f"{found['runs']} runs: " + ", ".join(f"{k} {totals.get(k, 0)}" for k in keys) + f"; wrote {args.out}")
    return 1 if totals.get("silent_mixed_resumes", 0) or totals.get("unloadable_checkpoints", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
