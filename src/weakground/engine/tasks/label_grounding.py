"""Label grounding (Fang et al., MCB attention, paper 000 in ../shared/seeds): multi-MNIST images with their digit
labels only.

Stage 1 pretrains the backbone on single digits; stage 2 (the shared trainer) asks the method one present (and
optionally one absent) digit per query; validation mAP picks the best epoch, then the box threshold is chosen on
validation among ``eval.threshold_candidates``, and the test split is scored with ink (or patch) boxes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from weakground.config import EvalConfig, ExperimentConfig, TrainConfig
from weakground.data.batches import classification_batches, images_to_tensor, label_query_batches
from weakground.engine.checkpoint import checkpoint_meta
from weakground.engine.evaluate import evaluate_label_grounding, label_summary_rows, print_table
from weakground.engine.tasks.base import TASKS, Batches, Task, store_config_in_checkpoint
from weakground.engine.trainer import Trainer, resolve_device


def pretrain_backbone(model: Any, config: ExperimentConfig, run_dir: Path, progress: bool, resume: bool) -> dict[str, Any]:
    """Stage 1 of Fang et al.: single-digit classification; returns the test-pool accuracy."""
    from weakground.data.digits import digit_classification_set
    from weakground.vision.resnet import DigitClassifier

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


def best_box_threshold(model: Any, eval_config: EvalConfig, val_set: Any, device: torch.device | str) -> float:
    """The candidate of ``eval_config.threshold_candidates`` with the best validation mAP (ties: the one
    closest to ``eval_config.box_threshold``)."""
    scores = {}
    for t in eval_config.threshold_candidates:
        trial = dataclasses.replace(eval_config, box_threshold=t)
        scores[t] = evaluate_label_grounding(model, val_set, trial, device)["map"]
    return max(scores, key=lambda t: (scores[t], -abs(t - eval_config.box_threshold)))


def choose_box_threshold(model: Any, config: ExperimentConfig, val_set: Any, device: torch.device,
                         checkpoint: Path) -> ExperimentConfig:
    """Pick ``eval.box_threshold`` among ``eval.threshold_candidates`` by validation mAP, and store the choice
    in the checkpoint's config so ``eval`` and ``locate`` use it too."""
    best = best_box_threshold(model, config.eval, val_set, device)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, box_threshold=best))
    store_config_in_checkpoint(model, config, checkpoint)
    return config


@torch.no_grad()
def presence_samples(model: Any, dataset: Any, batch_size: int, device: torch.device | str
                     ) -> tuple[list[float], list[float]]:
    """Every class's raw presence score on every image of ``dataset``, split by whether the digit is in it:
    (present, absent). The scores come from ``grounding_maps_and_presence``, the very call ``locate`` makes."""
    names, present, absent = list(model.class_names), [], []
    model.eval()
    for start in range(0, len(dataset), batch_size):
        images = images_to_tensor(dataset.images[start:start + batch_size]).to(device)
        _, raw = model.grounding_maps_and_presence(images, names)
        for b, scores in enumerate(raw.float().cpu().tolist()):
            labels = np.asarray(dataset.labels[start + b])
            for c, score in enumerate(scores):
                (present if c in labels else absent).append(score)
    return present, absent


def calibrate_presence(model: Any, config: ExperimentConfig, val_set: Any, device: torch.device,
                       checkpoint: Path, report: dict[str, Any]) -> ExperimentConfig:
    """Platt-fit the digits' presence (present vs absent classes on validation) and store it in the checkpoint,
    so ``locate`` says "not found" for a digit the image does not hold."""
    from weakground.metrics import auroc, fit_platt

    present, absent = presence_samples(model, val_set, config.eval.batch_size, device)
    if not present or not absent:
        print("presence not calibrated: validation has no present and absent digits")
        return config
    calibration = fit_platt(present, absent)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval,
                                                                  presence_calibration=calibration.to_list()))
    store_config_in_checkpoint(model, config, checkpoint)
    val_auroc = auroc(np.asarray(present), np.asarray(absent))
    report["presence_calibration"] = {"chosen": calibration.to_list(), "criterion": "Platt fit on validation",
                                      "val_auroc": val_auroc, "n_present": len(present), "n_absent": len(absent)}
    print(f"presence calibrated on validation (AUROC {val_auroc:.3f} over {len(present)} present and "
          f"{len(absent)} absent digits)")
    return config


@TASKS.register("label_grounding")
class LabelGrounding(Task):
    name = "label_grounding"
    best_key = "map"

    def class_names(self, config: ExperimentConfig, progress: bool = False) -> list[str]:
        from weakground.data.splits import class_names

        return class_names(config.data)

    def load_data(self, config: ExperimentConfig, progress: bool) -> dict[str, Any]:
        from weakground.data.splits import build_splits

        return build_splits(config.data, progress=progress)

    def before_training(self, model: Any, config: ExperimentConfig, run_dir: Path, progress: bool, resume: bool,
                        report: dict[str, Any]) -> None:
        if config.pretrain.enabled:
            report["pretrain"] = pretrain_backbone(model, config, run_dir, progress, resume)
            print(f"backbone pretraining: test-pool digit accuracy {100 * report['pretrain']['test_accuracy']:.2f}%")

    def batches(self, model: Any, config: ExperimentConfig, data: dict[str, Any]) -> tuple[Batches, int]:
        train_set, params = data["train"], model.config
        present = [train_set.present(i) for i in range(len(train_set))]
        n_classes, batch_size = len(model.class_names), config.train.batch_size

        def make_batches(rng):  # noqa: ANN001, ANN202
            return label_query_batches(train_set.images, present, batch_size, params.queries_per_image,
                                       params.absent_queries, rng, n_classes)

        return make_batches, len(train_set) // batch_size

    def validate(self, config: ExperimentConfig, data: dict[str, Any], device: torch.device
                 ) -> Callable[[Any], dict[str, float]]:
        def validate(m: torch.nn.Module) -> dict[str, float]:
            r = evaluate_label_grounding(m, data["val"], config.eval, device)
            return {k: r[k] for k in ("avg_iou", "ap50", "map", "absent_auroc")}

        return validate

    def after_training(self, model: Any, config: ExperimentConfig, data: dict[str, Any], device: torch.device,
                       checkpoint: Path, report: dict[str, Any]) -> ExperimentConfig:
        if config.eval.threshold_candidates:
            config = choose_box_threshold(model, config, data["val"], device, checkpoint)
            report["threshold_selection"] = {"candidates": list(config.eval.threshold_candidates),
                                             "chosen": config.eval.box_threshold, "criterion": "validation map"}
            print(f"box threshold chosen on validation: {config.eval.box_threshold}")
        return calibrate_presence(model, config, data["val"], device, checkpoint, report)

    def test(self, model: Any, config: ExperimentConfig, data: dict[str, Any], device: torch.device, run_dir: Path,
             progress: bool, figure: bool, report: dict[str, Any]) -> None:
        report["test"] = evaluate_label_grounding(model, data["test"], config.eval, device, progress=progress)
        if figure:
            from weakground.viz import grounding_figure

            grounding_figure(model, data["test"], run_dir / "grounding.png", config.eval.box_threshold, device)
            report["figure"] = str(run_dir / "grounding.png")

    def print_summary(self, config: ExperimentConfig, report: dict[str, Any], out: Path) -> None:
        layout = f"{config.data.grid}x{config.data.grid} grid" if config.data.layout == "grid" else "free layout"
        print(f"\n{config.name}: {config.method.name} on {config.data.name} ({layout}), test split")
        print_table(label_summary_rows(report["test"]))
        print(f"report: {out / 'report.json'}")
        if "figure" in report:
            print(f"figure: {report['figure']}")
