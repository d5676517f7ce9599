"""Data-parallel training against one process (issue 32): the tiny captioner config of tests/test_distributed.py,
trained by ``python -m weakground train`` and by ``torchrun --standalone --nproc_per_node 2 -m weakground train``
with the same global batch; records the largest absolute difference of the final weights (and of the optimizer
state saved with them), of the logged losses, and each command's wall time.

    PYTHONPATH=src python benchmarks/ddp_equivalence.py [--epochs 2]

Two optimizers: SGD, where the runs differ by float rounding only, and Adam, which divides each step by the root
of the gradient's second moment, so a weight whose true gradient is zero (a bias under a softmax) follows the sign
of rounding noise in either run and the two runs' values of it differ by up to the learning rate times the steps.
Wall time on a 2-core CPU is dominated by start-up (imports, data, evaluation on rank 0), not by the steps.
Writes ``benchmarks/results/ddp.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from weakground.engine.driver import machine_description

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_test_unseen=0", "data.image_size=64",
        "method.params.regions.max_regions=6", "method.params.hidden=16", "method.params.embed_dim=8",
        "method.params.attention_dim=8", "method.params.beam=1", "method.params.max_len=3",
        "method.params.dropout=0", "method.params.mu=0", "train.batch_size=8", "train.warmup_steps=0",
        "train.schedule=constant", "train.device=cpu"]
OPTIMIZERS = {"sgd": ["train.optimizer=sgd", "train.lr=0.05"], "adam": ["train.optimizer=adam", "train.lr=0.001"]}


def _command(out: Path, processes: int, sets: list[str]) -> list[str]:
    launcher = [sys.executable] if processes == 1 else [str(TORCHRUN), "--standalone", "--nproc_per_node",
                                                          str(processes)]
    args = [*launcher, "-m", "weakground", "train", "--preset", "ss_attention_cpu", "--out", str(out), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return args


def _run(out: Path, processes: int, sets: list[str], cache: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEAKGROUND_CACHE": str(cache)}
    t0 = time.perf_counter()
    subprocess.run(_command(out, processes, sets), check=True, capture_output=True, env=env)
    return round(time.perf_counter() - t0, 2)


def _differences(one: Path, two: Path) -> dict[str, float]:
    a, b = (load_file(r / "checkpoints" / "train_last.safetensors") for r in (one, two))
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a}
    weights = {k: v for k, v in diff.items() if not k.startswith("__optimizer__")}
    worst = max(weights, key=weights.get)
    logs = [list(csv.DictReader(open(r / "train_log.csv", newline=""))) for r in (one, two)]
    loss = max(abs(float(x["total"]) - float(y["total"])) for x, y in zip(*logs))
    return {"max_abs_diff_weights": max(weights.values()), "worst_weight": worst,
            "max_abs_diff_weights_and_optimizer_state": max(diff.values()),
            "max_abs_diff_logged_loss": loss, "logged_rows": len(logs[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    results = {"machine": machine_description(), "config": {"preset": "ss_attention_cpu", "set": TINY,
                                                            "epochs": args.epochs, "global_batch_size": 8}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _run(tmp / "warm-up", 1, [*TINY, "train.epochs=1"], tmp / "cache")  # the scenes' cache, then timed runs
        for name, extra in OPTIMIZERS.items():
            sets = [*TINY, *extra, f"train.epochs={args.epochs}"]
            times = {f"{n}_process_seconds": _run(tmp / f"{name}{n}", n, sets, tmp / "cache") for n in (1, 2)}
            results["runs"][name] = {"set": extra, **_differences(tmp / f"{name}1", tmp / f"{name}2"), **times,
                                     "command_2_processes": " ".join(["torchrun", *_command(Path("OUT"), 2, sets)[1:]])}
            print(name, json.dumps(results["runs"][name], indent=1))
    (RESULTS / "ddp.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'ddp.json'}")


if __name__ == "__main__":
    main()
