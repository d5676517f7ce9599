"""The GPU suite: training step time, images/s, peak memory and model FLOP utilisation of every ``*_gpu`` preset
and the paper-scale multi-MNIST run, in float32 (TF32 matrix products), bf16 autocast and bf16 + ``torch.compile``.

    PYTHONPATH=src python benchmarks/gpu_suite.py                 # on a CUDA machine: writes results/gpu.json
    PYTHONPATH=src python benchmarks/gpu_suite.py --dry-run       # anywhere: tiny sizes on the CPU, to --out

What one run measures, per (preset, variant):

* the preset's own task, method and batches (``task_for`` -> ``build_trained_method`` -> ``Task.batches``), with
  the data cut to what the timed steps need (``data.n_train``; validation and test sets are not used) and the
  backbone pretraining stage off: the suite times the method's training step, not a whole run;
* ``data_batches_per_s``: how fast the task's CPU-side batch maker produces batches (timed apart from the model,
  so a data-bound preset shows as one);
* then ``--warmup`` steps (for ``compile``: its compilation, timed as ``compile_seconds``) and timed steps on
  ``--cached-batches`` batches already on the device, cycled, until ``--seconds`` have passed: ``step_ms`` p50 /
  mean, ``images_per_s``, ``peak_memory_mib`` (``torch.cuda.max_memory_allocated`` of that run);
* ``flops_per_step`` from ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward in eager
  float32 (matrix products and convolutions; FFTs, such as MCB's, and element-wise work are not counted, so the
  utilisation is a lower bound), and ``mfu`` = flops_per_step x steps/s / the device's dense peak for the
  variant's precision (TF32 or bf16; from :data:`PEAK_FLOPS`, ``null`` for a device not listed there).

A variant that fails (e.g. ``torch.compile`` on a graph it cannot trace) is recorded with its one-line error and
the suite goes on; ``--budget`` bounds the whole suite (later runs are recorded as skipped). CI has no GPU: the
tests run ``--dry-run`` (CPU, two steps a run, float32 and bf16) so the suite's code stays working.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from weakground.config import ExperimentConfig, load_config
from weakground.engine.driver import machine_description
from weakground.engine.inference import build_trained_method
from weakground.engine.tasks import task_for
from weakground.engine.trainer import build_optimizer, resolve_device, seed_everything

RESULTS = Path(__file__).parent / "results"
PRESETS = ("matchmap_gpu", "multilevel_gpu", "dsve_loc_gpu", "mcb_attention_captions_gpu", "paper_scale")
VARIANTS = ("fp32", "bf16", "bf16_compile")
# Dense peak FLOP/s (no sparsity) by device name fragment, checked in order: (TF32, bf16), from the vendors'
# datasheets. H100 PCIe before H100 (the SXM part, whose name has no form factor in it).
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 494.7e12, 989.4e12),
    ("H100 PCIe", 378.0e12, 756.0e12),
    ("H100", 494.7e12, 989.4e12),
    ("A100", 156.0e12, 312.0e12),
    ("L40S", 183.0e12, 362.0e12),
    ("L4", 60.0e12, 121.0e12),
)


# The dry run checks the suite's code, not the presets' sizes: the two presets whose full-size step takes seconds
# on a CPU are narrowed there (and only there).
DRY_RUN_OVERRIDES = {
    "paper_scale": ["backbone.widths=[8,16,32,64]", "method.params.mcb_dim=256", "method.params.hidden=16"],
    "dsve_loc_gpu": ["method.params.embed_dim=64", "method.params.text_hidden=64", "method.params.text_layers=1"],
}


def device_peak(device: torch.device, variant: str) -> float | None:
    """The dense peak FLOP/s of ``device`` for ``variant``'s precision; None on the CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tf32, bf16 in PEAK_FLOPS:
        if fragment in name:
            return bf16 if variant.startswith("bf16") else tf32
    return None


def suite_config(preset: str, batches_needed: int, batch_size: int | None, device: str, dry_run: bool = False
                 ) -> ExperimentConfig:
    """``preset`` cut to the data the timed steps need, pretraining off, on ``device`` (narrowed for a dry run)."""
    config = load_config(preset)
    batch = batch_size or config.train.batch_size
    overrides = [f"data.n_train={max(batch * batches_needed, 2 * batch)}", "pretrain.enabled=false",
                 f"train.device={device}", f"train.batch_size={batch}"]
    for key in ("n_val", "n_test"):  # unused by the suite; the smallest size the data sources accept
        if hasattr(config.data, key):
            overrides.append(f"data.{key}=8")
    return load_config(preset, overrides + (DRY_RUN_OVERRIDES.get(preset, []) if dry_run else []))


def _on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: dict[str, Any]) -> int:
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, config: ExperimentConfig, device: torch.device, variant: str
              ) -> Callable[[dict[str, Any]], float]:
    """One optimisation step as the trainer takes it (autocast, backward, clipping, Adam/SGD), for ``variant``."""
    optimizer = build_optimizer(model, config.train)
    loss_fn = torch.compile(model.loss) if variant.endswith("compile") else model.loss
    use_bf16 = variant.startswith("bf16")

    def step(batch: dict[str, Any]) -> float:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            total = loss_fn(batch)["total"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        return float(total.detach())

    return step


def count_flops(model: torch.nn.Module, batch: dict[str, Any]) -> int:
    """Forward + backward FLOPs of one eager float32 step (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(batch)["total"].backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _build(preset: str, args: argparse.Namespace) -> tuple[ExperimentConfig, Any, Any, Callable, torch.device]:
    config = suite_config(preset, args.cached_batches, args.batch_size, args.device, args.dry_run)
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)  # also switches TF32 on, as training does
    task = task_for(config)
    model = build_trained_method(config, task.class_names(config, False))
    data = task.load_data(config, False)
    make_batches, _ = task.batches(model, config, data)
    return config, task, model, make_batches, device


def draw_batches(make_batches: Callable, count: int, device: torch.device) -> tuple[list[dict[str, Any]], float]:
    """``count`` batches from the task's batch maker, moved to ``device``, and the maker's batches/s."""
    start, batches = time.perf_counter(), []
    for batch in make_batches(np.random.default_rng([0, 0])):
        batches.append(batch)
        if len(batches) == count:
            break
    rate = len(batches) / (time.perf_counter() - start)
    return [_on_device(b, device) for b in batches], rate


def time_variant(model: torch.nn.Module, config: ExperimentConfig, batches: list[dict[str, Any]],
                 device: torch.device, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up (compilation included), then timed steps until ``args.seconds`` or ``args.max_steps``."""
    step = make_step(model, config, device, variant)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    _sync(device)
    warmup_seconds = time.perf_counter() - start
    times, losses = [], []
    deadline = time.perf_counter() + args.seconds
    while len(times) < args.max_steps and (len(times) < args.min_steps or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        losses.append(step(batches[len(times) % len(batches)]))  # float() of the loss synchronises
        _sync(device)
        times.append(time.perf_counter() - t0)
    images = sum(_batch_size(batches[i % len(batches)]) for i in range(len(times)))
    record = {"variant": variant, "steps": len(times), "step_ms_p50": round(1000 * statistics.median(times), 2),
              "step_ms_mean": round(1000 * statistics.fmean(times), 2),
              "images_per_s": round(images / sum(times), 1), "losses_finite": bool(np.isfinite(losses).all()),
              "peak_memory_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                                  if device.type == "cuda" else None)}
    if variant.endswith("compile"):
        record["compile_seconds"] = round(warmup_seconds, 1)
    return record


def run_preset(preset: str, args: argparse.Namespace, budget_end: float) -> dict[str, Any]:
    config, task, model, make_batches, device = _build(preset, args)
    model.to(device)
    batches, data_rate = draw_batches(make_batches, args.cached_batches, device)
    flops = count_flops(model, batches[0])
    entry: dict[str, Any] = {"preset": preset, "task": task.name, "method": config.method.name,
                             "batch_size": _batch_size(batches[0]), "data_batches_per_s": round(data_rate, 2),
                             "flops_per_step": flops, "runs": []}
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for variant in args.variants:
        if time.perf_counter() > budget_end:
            entry["runs"].append({"variant": variant, "skipped": "the suite's --budget was spent"})
            continue
        model.load_state_dict(initial)  # every variant starts from the same weights
        try:
            record = time_variant(model, config, batches, device, variant, args)
        except Exception as exc:  # one variant failing (e.g. compile) must not lose the others' figures
            entry["runs"].append({"variant": variant, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
            continue
        peak = device_peak(device, variant)
        steps_per_s = 1000.0 / record["step_ms_mean"]
        record["mfu"] = round(flops * steps_per_s / peak, 4) if peak else None
        entry["runs"].append(record)
        print(f"{preset:28s} {variant:13s} {record['step_ms_p50']:8.1f} ms/step {record['images_per_s']:8.1f} img/s"
              f"  mfu {record['mfu']}", flush=True)
    return entry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--device", default="cuda", help="cuda (the suite's purpose) or cpu")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per (preset, variant)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--min-steps", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--cached-batches", type=int, default=4, help="distinct batches cycled on the device")
    parser.add_argument("--batch-size", type=int, default=None, help="override the presets' batch size")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole suite")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, batch 4, 1 warm-up + 2 timed steps, fp32 and bf16 only, the two largest presets "
                        "narrowed (what the tests run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.batch_size, args.warmup, args.min_steps, args.max_steps = "cpu", 4, 1, 2, 2
        args.cached_batches, args.seconds = 2, 0.0
        if args.variants == ",".join(VARIANTS):
            args.variants = "fp32,bf16"
    args.presets = [p for p in args.presets.split(",") if p]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown[0]!r} (choose from {', '.join(VARIANTS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU machine, or pass --dry-run (or --device cpu)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget_end = time.perf_counter() + args.budget
    started = time.time()
    results = [run_preset(preset, args, budget_end) for preset in args.presets]
    out = {"command": "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "dry_run": args.dry_run, "machine": machine_description(), "seconds": round(time.time() - started, 1),
           "settings": {k: getattr(args, k) for k in ("seconds", "warmup", "cached_batches", "batch_size", "budget")},
           "presets": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
