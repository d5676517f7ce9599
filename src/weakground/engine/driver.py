"""The one training driver: ``weakground train`` for every task.

    config --task_for--> Task (from the dataset registry: which supervision the data gives)
    build the method (its inference settings from the config) -> optional start from another run's weights
    -> the task's data -> config.json -> the task's stage before training (backbone pretraining)
    -> the shared Trainer over the task's batches, validated by the task -> best weights reloaded
    -> settings chosen on validation -> the task's test report -> report.json

Nothing here knows a dataset's or a method's name: tasks and methods come from their registries.

Under torchrun (docs/distributed.md) every rank builds the method and the data and trains its slice of each batch;
rank 0 alone writes config.json, checkpoints, logs, report.json and figures, and alone runs the steps after
training (threshold choice, test), while the other ranks return as soon as training is done.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from weakground.version import __version__
from weakground.config import ExperimentConfig, to_dict
from weakground.data.sources import unused_data_settings
from weakground.engine import distributed
from weakground.engine.checkpoint import atomic_write_text, checkpoint_meta, load_weights, read_checkpoint
from weakground.engine.inference import build_trained_method
from weakground.engine.tasks import Task, task_for
from weakground.engine.trainer import Trainer, resolve_device, seed_everything
from weakground.errors import CheckpointError, ConfigError
from weakground.methods import Grounder
from weakground.registry import METHODS


def machine_description() -> dict[str, Any]:
    device = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}


def init_from_checkpoint(model: Grounder, config: ExperimentConfig) -> dict[str, Any] | None:
    """Load the trained weights named by ``train.init_from`` into ``model`` and describe where they came from
    (for the report); ``None`` when it is empty and the run starts from pretraining.

    Only what the weights' shapes cannot check is checked here (the method and the class names: a "3" must
    stay a "3"); a different architecture fails in :func:`load_weights`. Data, loss weights and schedule may
    differ: that is the point of a curriculum."""
    if not config.train.init_from:
        return None
    path = Path(config.train.init_from)
    state, meta = read_checkpoint(path)
    if meta.get("stage") != "train":
        raise CheckpointError(f"{path}: train.init_from needs a trained method's checkpoint (e.g. train_best.safetensors), "
                              f"not a {meta.get('stage', 'unlabelled')!r}-stage one")
    if meta.get("method") != model.name:
        raise CheckpointError(f"{path}: train.init_from holds method {meta.get('method')!r}, this run trains {model.name!r}")
    if meta.get("class_names") != model.class_names:
        raise CheckpointError(f"{path}: train.init_from has classes {meta.get('class_names')} instead of {model.class_names}")
    load_weights(path, model, state)
    source = meta.get("config", {})
    return {"checkpoint": str(path), "data": source.get("data", {}), "name": source.get("name"),
            "best_val": meta.get("train_state", {}).get("best")}


def _mean_throughput(history: list[dict[str, Any]]) -> float | None:
    rates = [h["images_per_second"] for h in history if "images_per_second" in h]
    return round(sum(rates) / len(rates), 1) if rates else None


def _build(config: ExperimentConfig, progress: bool) -> tuple[Task, Grounder, dict[str, Any] | None]:
    """The task and the method, checked before any data is made or any file written."""
    if not METHODS.get(config.method.name).trainable:
        raise ConfigError(f"method {config.method.name!r} needs no training (a baseline, or pretrained models used as "
                          f"they are): use `weakground locate --method {config.method.name}`")
    task = task_for(config)
    unused = unused_data_settings(config.data)
    if unused:  # typed per dataset: a setting the chosen dataset never reads is worth a line, not silence
        print(f"note: dataset {config.data.name!r} does not read data.{', data.'.join(unused)} (set but unused)")
    seed_everything(config.train.seed)
    model = build_trained_method(config, task.class_names(config, progress))
    task.check_method(model, config)
    return task, model, init_from_checkpoint(model, config)  # a bad train.init_from fails here too


def _train(task: Task, model: Grounder, config: ExperimentConfig, data: Any, run_dir: Path, resume: bool,
           progress: bool) -> tuple[Trainer, dict[str, Any]]:
    device = resolve_device(config.train.device)
    make_batches, steps = task.batches(model, config, data)
    trainer = Trainer(model, config.train, run_dir, checkpoint_meta(config, model.class_names), stage="train",
                      evaluate=task.validate(config, data, device), best_key=task.best_key, progress=progress)
    result = trainer.fit(make_batches, steps, resume=resume)
    if distributed.is_main():  # the ranks that return after training need no best weights
        state, _ = read_checkpoint(trainer.best_path)
        load_weights(trainer.best_path, model, state)
    model.to(device).eval()
    return trainer, result


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# Settings that change how fast a run trains, not what it learns (to float rounding): a resumed run may differ in
# them, and a run saved before they existed resumes with them.
RESUME_NEUTRAL_KEYS = frozenset({"train.cache_features"})


def check_resumed_config(config: ExperimentConfig, run_dir: Path, allowed: Sequence[str] = ()) -> None:
    """Refuse to resume ``run_dir`` under a config that differs from the one it was started with, unless each
    differing key (or a section above it) is in ``allowed`` (the keys the user ``--set`` on purpose).

    Raises:
        ConfigError: naming the differing keys with their saved and new values.
    """
    saved_path = Path(run_dir) / "config.json"
    if not saved_path.is_file():
        return
    try:
        saved = _flatten(json.loads(saved_path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{saved_path}: cannot read the run's saved config ({exc})") from None
    new = _flatten(to_dict(config))
    allowed_prefixes = tuple(allowed)
    differ = [k for k in sorted(set(saved) | set(new)) if saved.get(k, "<absent>") != new.get(k, "<absent>")
              and k not in RESUME_NEUTRAL_KEYS
              and not any(k == a or k.startswith(f"{a}.") for a in allowed_prefixes)]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise ConfigError(f"{run_dir}: --resume under a changed config ({shown}{more}); pass the same preset and "
                          f"--set, or --set each changed key explicitly to mean it")


def run_experiment(config: ExperimentConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                   figure: bool = True, allowed_changes: Sequence[str] = ()) -> dict[str, Any]:
    """Train and evaluate ``config``; writes ``config.json``, logs, checkpoints, ``report.json`` (and figures).
    With ``resume``, a config that differs from the run's saved one is refused unless its differing keys are in
    ``allowed_changes`` (:func:`check_resumed_config`).

    Under torchrun (``WORLD_SIZE`` > 1) each process joins the process group here; ranks other than 0 return
    ``{}`` once training is done (rank 0 alone reports)."""
    t0 = time.time()
    with distributed.session(resolve_device(config.train.device).type):
        distributed.check_batch_size(config.train.batch_size, "train.batch_size")  # before any data is made
        return _run(config, Path(run_dir), resume, progress and distributed.is_main(), figure, allowed_changes, t0)


def _run(config: ExperimentConfig, run_dir: Path, resume: bool, progress: bool, figure: bool,
         allowed_changes: Sequence[str], t0: float) -> dict[str, Any]:
    main = distributed.is_main()
    with distributed.local_main_first():  # data and caches made by one process per node, then read by the rest
        task, model, init_from = _build(config, progress)
        if resume:  # after _build: a task writes what it derives into the config (a captioner's object words),
            check_resumed_config(config, run_dir, allowed_changes)  # as the saved config.json has it
        data = task.load_data(config, progress)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(to_dict(config), indent=2))
    report: dict[str, Any] = {"name": config.name, "method": config.method.name, "task": task.name,
                              **task.report_header(config, data), "machine": machine_description(),
                              "weakground_version": __version__}
    if distributed.world_size() > 1:
        report["distributed"] = {"processes": distributed.world_size(), "global_batch_size": config.train.batch_size}
    if init_from is not None:
        report["init_from"] = init_from
        print(f"starting from {config.train.init_from} (its weights are already trained: no pretraining)")
    else:
        task.before_training(model, config, run_dir, progress, resume, report)
    trainer, result = _train(task, model, config, data, run_dir, resume, progress)
    if not main:
        return {}
    device = resolve_device(config.train.device)
    config = task.after_training(model, config, data, device, trainer.best_path, report)
    report["train"] = {"history": result["history"], "best_val": result["best"], "seconds": round(time.time() - t0, 1),
                       "images_per_second": _mean_throughput(result["history"]), "checkpoint": str(trainer.best_path)}
    task.test(model, config, data, device, run_dir, progress, figure, report)
    report["config"] = to_dict(config)
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    return report
