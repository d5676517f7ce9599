"""ONNX export: onnxruntime's parity with PyTorch (max abs error) and latency next to PyTorch's, in one run.

    PYTHONPATH=src python benchmarks/export_onnx.py [--runs 30] [--checkpoint DSVE_LOC.safetensors]

* ``bridge`` exported with ``weakground.export.export_onnx`` (working size 448 px long side); a trained method,
  ``dsve_loc``: ``--checkpoint`` if given, else a checkpoint written here from the ``dsve_loc_cpu`` preset with
  ``data.image_size=448``, ``eval.shift_average=1`` and its initialised weights (parity and latency do not depend on what was learned; the
  preset fine-tunes EfficientNet, so its PyTorch side runs the unfused BatchNorm network, as a trained one would).
* Input: skimage's chelsea photo (451x300) and three phrases. ``full``: ``Predictor.heatmaps`` against
  ``OnnxGrounder.heatmaps`` (both include the same Python text side and resize); ``graph``: the image encoder +
  heatmap head alone on the same prepared image and phrase inputs (PyTorch module vs onnxruntime session). The
  two are timed interleaved (one PyTorch call, then one onnxruntime call, ``--runs`` times after warm-up), so
  load from other processes falls on both alike; onnxruntime gets torch's thread count. p50 / p95 in ms.

Writes ``benchmarks/results/export_onnx.json`` with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from weakground.engine.driver import machine_description
from weakground.engine.inference import load
from weakground.export import OnnxGrounder, _graph_module, export_onnx, phrase_inputs, prepare
from weakground.io import image_to_tensor

RESULTS = Path(__file__).parent / "results"
PHRASES = ["the cat", "a cup of coffee", "whiskers"]


def _stats(samples: list[float]) -> dict[str, float]:
    arr = np.array(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p95_ms": round(float(np.percentile(arr, 95)), 1)}


def _interleaved(pt, ort, runs: int, warmup: int = 3) -> tuple[dict, dict]:
    for _ in range(warmup):
        pt(), ort()
    a, b = [], []
    for _ in range(runs):
        t = time.perf_counter()
        pt()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        ort()
        b.append(time.perf_counter() - t)
    return _stats(a), _stats(b)


def _dsve_checkpoint(folder: Path) -> Path:
    from weakground.config import load_config
    from weakground.engine.checkpoint import checkpoint_meta, save_checkpoint
    from weakground.methods import create_method

    # One pass per call (the preset's eval.shift_average=3 runs the same graph 9 times on shifted copies, on both
    # sides alike; tests/test_export.py checks that path's parity).
    config = load_config("dsve_loc_cpu", ["data.image_size=448", "eval.shift_average=1"])
    torch.manual_seed(0)
    model = create_method("dsve_loc", config.backbone, [], config.method.params)
    path = folder / "dsve_loc_cpu_448.safetensors"
    save_checkpoint(path, model, {**checkpoint_meta(config, []), "stage": "train"})
    return path


def measure(source: str | Path, folder: Path, image: torch.Tensor, runs: int, threads: int) -> dict:
    """Export ``source``, then parity and interleaved latency of PyTorch and onnxruntime on ``image``."""
    out = folder / f"{Path(str(source)).stem}.onnx"
    t = time.perf_counter()
    meta = export_onnx(source, out)
    export_s = time.perf_counter() - t
    predictor, grounder = load(source), OnnxGrounder(out, threads=threads)
    model = predictor.model
    expected, got = predictor.heatmaps(image, PHRASES), grounder.heatmaps(image, PHRASES)
    prepared, text = prepare(model, image), phrase_inputs(model, PHRASES)
    graph = _graph_module(model)
    with torch.no_grad():
        graph_error = float(np.abs(graph(prepared, text).numpy() - grounder.run(prepared.numpy(), text.numpy())).max())
        full_pt, full_ort = _interleaved(lambda: predictor.heatmaps(image, PHRASES),
                                         lambda: grounder.heatmaps(image, PHRASES), runs)
        graph_pt, graph_ort = _interleaved(lambda: graph(prepared, text),
                                           lambda: grounder.run(prepared.numpy(), text.numpy()), runs)
    return {
        "method": meta["method"], "source": str(source), "onnx_mb": round(out.stat().st_size / 2**20, 1),
        "export_s": round(export_s, 1), "prepared_input": list(prepared.shape), "maps": list(expected.shape),
        "max_abs_error": float((got - expected).abs().max()), "graph_max_abs_error": graph_error,
        "map_peak": float(expected.abs().max()),
        "full": {"pytorch": full_pt, "onnxruntime": full_ort,
                 "ratio_p50": round(full_ort["p50_ms"] / full_pt["p50_ms"], 3)},
        "graph": {"pytorch": graph_pt, "onnxruntime": graph_ort,
                  "ratio_p50": round(graph_ort["p50_ms"] / graph_pt["p50_ms"], 3)},
    }


def main() -> None:
    import onnxruntime
    from skimage import data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1],
                        help="torch's and onnxruntime's intra-op thread counts to run at (default: torch's, then 1)")
    parser.add_argument("--checkpoint", type=Path, help="a trained dsve_loc checkpoint (default: built here)")
    args = parser.parse_args()
    load_start = [round(v, 2) for v in os.getloadavg()]
    image = image_to_tensor(data.chelsea())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = ("bridge", args.checkpoint or _dsve_checkpoint(folder))
        for threads in args.threads:
            torch.set_num_threads(threads)
            for source in sources:
                row = measure(source, folder, image, args.runs, threads)
                if args.checkpoint is None and row["method"] == "dsve_loc":
                    row["source"] = ("dsve_loc_cpu preset, data.image_size=448, eval.shift_average=1, "
                                     "initialised weights (built here)")
                results.setdefault(f"{threads}_threads", {})[row["method"]] = row
                print(threads, json.dumps(row), flush=True)
    report = {"command": " ".join(["PYTHONPATH=src python benchmarks/export_onnx.py", *sys.argv[1:]]),
              "runs": args.runs, "image": "skimage chelsea 451x300", "phrases": PHRASES,
              "machine": {**machine_description(), "threads": args.threads, "onnxruntime": onnxruntime.__version__,
                          "cpu_count": os.cpu_count()},
              "load_average_at_start": load_start, "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
              "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_onnx.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
