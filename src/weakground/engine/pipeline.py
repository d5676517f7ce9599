"""The main job: build the data, pretrain the backbone, train the method, evaluate it, write the report.

``run_experiment`` is what ``weakground train`` runs; ``load_grounder`` rebuilds a trained method from its
checkpoint for ``weakground eval`` and ``weakground locate``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from weakground import __version__
from weakground.config import EvalConfig, ExperimentConfig, TrainConfig, config_from_json, to_dict
from weakground.data.batches import classification_batches, images_to_tensor, label_query_batches
from weakground.data.splits import build_splits, class_names
from weakground.engine.checkpoint import atomic_write_text, load_weights, read_checkpoint, save_checkpoint
from weakground.engine.evaluate import check_ground_truth, evaluate_label_grounding
from weakground.engine.trainer import Trainer, resolve_device, seed_everything
from weakground.errors import CheckpointError, ConfigError
from weakground.methods import Grounder, create_method
from weakground.registry import METHODS
from weakground.vision.resnet import DigitClassifier


def machine_description() -> dict[str, Any]:
    device = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}


def checkpoint_meta(config: ExperimentConfig, names: list[str]) -> dict[str, Any]:
    return {"method": config.method.name, "class_names": names, "config": to_dict(config),
            "weakground_version": __version__}


def pretrain_backbone(model: Grounder, config: ExperimentConfig, run_dir: Path, progress: bool, resume: bool) -> dict[str, Any]:
    """Stage 1 of seed 000: single-digit classification; returns the test-pool accuracy."""
    from weakground.data.digits import digit_classification_set

    pre = config.pretrain
    train_x, train_y = digit_classification_set("train")
    test_x, test_y = digit_classification_set("test")
    classifier = DigitClassifier(model.backbone, len(model.class_names))
    stage_config = TrainConfig(epochs=pre.epochs, batch_size=pre.batch_size, lr=pre.lr, momentum=pre.momentum,
                               weight_decay=pre.weight_decay, backbone_lr_mult=1.0, eval_every=0,
                               seed=config.train.seed, device=config.train.device, warmup_steps=20)
    device = resolve_device(config.train.device)

    def accuracy(m: torch.nn.Module) -> dict[str, float]:
        correct = 0
        for s in range(0, len(test_x), 500):
            logits = m(images_to_tensor(test_x[s:s + 500]).to(device))
            correct += int((logits.argmax(-1).cpu() == torch.from_numpy(test_y[s:s + 500])).sum())
        return {"test_accuracy": correct / len(test_x)}

    trainer = Trainer(classifier, stage_config, run_dir, checkpoint_meta(config, model.class_names), stage="pretrain",
                      evaluate=accuracy, progress=progress)
    steps = len(train_x) // pre.batch_size
    result = trainer.fit(lambda rng: classification_batches(train_x, train_y, pre.batch_size, rng, config.data.noise_std),
                         steps, resume=resume)
    return {"test_accuracy": result["history"][-1]["test_accuracy"], "n_train_digits": len(train_x),
            "n_test_digits": len(test_x), "epochs": pre.epochs}


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


def run_experiment(config: ExperimentConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                   figure: bool = True) -> dict[str, Any]:
    """Train and evaluate ``config``; writes ``config.json``, logs, checkpoints, ``report.json`` and a figure."""
    # Build the model first: a bad method setting fails here, before any data is made or any file written.
    if not METHODS.get(config.method.name).trainable:
        raise ConfigError(f"method {config.method.name!r} needs no training (a baseline, or pretrained models used as "
                          f"they are): use `weakground locate --method {config.method.name}`")
    if config.data.name != "multimnist":
        from weakground.engine.caption_pipeline import run_caption_experiment

        return run_caption_experiment(config, run_dir, resume, progress, figure)
    seed_everything(config.train.seed)
    t0 = time.time()
    names = class_names(config.data)
    model = create_method(config.method.name, config.backbone, names, config.method.params)
    configure_inference(model, config)
    # A bad train.init_from fails here too, before any file is written.
    init_from = init_from_checkpoint(model, config)
    data = build_splits(config.data, progress=progress)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(to_dict(config), indent=2))
    device = resolve_device(config.train.device)
    report: dict[str, Any] = {"name": config.name, "method": config.method.name, "machine": machine_description(),
                              "weakground_version": __version__}
    if init_from is not None:
        report["init_from"] = init_from
        print(f"starting from {config.train.init_from} (its backbone is already trained: no pretraining)")
    elif config.pretrain.enabled:
        report["pretrain"] = pretrain_backbone(model, config, run_dir, progress, resume)
        print(f"backbone pretraining: test-pool digit accuracy {100 * report['pretrain']['test_accuracy']:.2f}%")
    train = config.train
    params = model.config
    train_set, val_set, test_set = data["train"], data["val"], data["test"]
    present = [train_set.present(i) for i in range(len(train_set))]

    def make_batches(rng):
        return label_query_batches(train_set.images, present, train.batch_size, params.queries_per_image,
                                   params.absent_queries, rng, len(names))

    def validate(m: torch.nn.Module) -> dict[str, float]:
        r = evaluate_label_grounding(m, val_set, config.eval, device)
        return {k: r[k] for k in ("avg_iou", "ap50", "map", "absent_auroc")}

    trainer = Trainer(model, train, run_dir, checkpoint_meta(config, names), stage="train", evaluate=validate,
                      best_key="map", progress=progress)
    result = trainer.fit(make_batches, len(train_set) // train.batch_size, resume=resume)
    state, _ = read_checkpoint(trainer.best_path)
    load_weights(trainer.best_path, model, state)
    model.to(device)
    if config.eval.threshold_candidates:
        config = choose_box_threshold(model, config, val_set, device, trainer.best_path)
        report["threshold_selection"] = {"candidates": list(config.eval.threshold_candidates),
                                         "chosen": config.eval.box_threshold, "criterion": "validation map"}
        print(f"box threshold chosen on validation: {config.eval.box_threshold}")
    report["train"] = {"history": result["history"], "best_val": result["best"],
                       "seconds": round(time.time() - t0, 1), "checkpoint": str(trainer.best_path)}
    report["test"] = evaluate_label_grounding(model, test_set, config.eval, device, progress=progress)
    report["config"] = to_dict(config)
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    if figure:
        from weakground.viz import grounding_figure

        grounding_figure(model, test_set, run_dir / "grounding.png", config.eval.box_threshold, device)
        report["figure"] = str(run_dir / "grounding.png")
    return report


def choose_box_threshold(model: Grounder, config: ExperimentConfig, val_set: Any, device: torch.device,
                         checkpoint: Path) -> ExperimentConfig:
    """Pick ``eval.box_threshold`` among ``eval.threshold_candidates`` by validation mAP, and store the choice
    in the checkpoint's config so ``eval`` and ``locate`` use it too."""
    best = best_box_threshold(model, config.eval, val_set, device)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, box_threshold=best))
    _, meta = read_checkpoint(checkpoint)
    meta["config"] = to_dict(config)
    save_checkpoint(checkpoint, model, meta)
    return config


def best_box_threshold(model: Grounder, eval_config: EvalConfig, val_set: Any, device: torch.device | str) -> float:
    """The candidate of ``eval_config.threshold_candidates`` with the best validation mAP (ties: the one
    closest to ``eval_config.box_threshold``)."""
    scores = {}
    for t in eval_config.threshold_candidates:
        trial = dataclasses.replace(eval_config, box_threshold=t)
        scores[t] = evaluate_label_grounding(model, val_set, trial, device)["map"]
    return max(scores, key=lambda t: (scores[t], -abs(t - eval_config.box_threshold)))


def load_grounder(path: Path, device: torch.device | str = "cpu") -> tuple[Grounder, ExperimentConfig]:
    """Rebuild a trained method from a ``.safetensors`` checkpoint written by the trainer."""
    path = Path(path)
    state, meta = read_checkpoint(path)
    if meta.get("stage") == "pretrain":
        raise CheckpointError(f"{path}: this is a backbone-pretraining checkpoint, not a grounding method's")
    for key in ("method", "class_names", "config"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r}")
    config = config_from_json(json.dumps(meta["config"]), f"{path} (saved config)")
    if config.method.name != meta["method"]:
        raise CheckpointError(f"{path}: metadata names method {meta['method']!r} but its config {config.method.name!r}")
    model = create_method(meta["method"], config.backbone, meta["class_names"], config.method.params)
    load_weights(path, model, state)
    configure_inference(model, config)
    return model.to(device).eval(), config


def configure_inference(model: Grounder, config: ExperimentConfig) -> None:
    """How a trained model reads images: caption-trained methods see them resized to the training square when
    ``data.eval_resize`` is on (see :attr:`Grounder.input_size`), label-trained ones (multi-MNIST) at the size they
    come in; every method averages ``eval.shift_average``^2 shifted copies (:attr:`Grounder.shift_average`)."""
    if config.eval.shift_average < 1:
        raise ConfigError(f"eval.shift_average must be >= 1 (1: no shifted copies), got {config.eval.shift_average}")
    check_ground_truth(config.eval)
    caption_trained = bool(getattr(model, "has_joint_space", False))
    model.input_size = config.data.image_size if caption_trained and config.data.eval_resize else None
    model.shift_average = config.eval.shift_average


def replace_data(config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **changes))
