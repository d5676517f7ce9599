"""Caption grounding: images with captions only (the synthetic scenes, or Flickr30K Entities / COCO / ReferIt /
Visual Genome on disk) train a joint-space method with no box; its phrase heatmaps are scored with the pointing
game.

Data flows one way: a dataset spec (``FORMAT:PATH``; the scenes are generated once into the cache and read back
through the Flickr30K Entities reader like any user dataset) -> :class:`CaptionTrainSet` (images resized to
``data.image_size`` and caption *texts* only: phrases and boxes are dropped when the set is built, so no box can
reach a training step) -> batches ``{"images", "captions"}`` -> the shared trainer -> validation pointing accuracy
picks the best epoch -> :func:`~weakground.engine.phrase_eval.evaluate_phrase_grounding` on ``test`` and, for
scenes, ``test_unseen`` (held-out colour-category pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from weakground.config import ExperimentConfig
from weakground.engine.feature_cache import CaptionFeatures, caption_features
from weakground.engine.tasks.base import TASKS, Batches, Task, read_square, store_config_in_checkpoint
from weakground.errors import ConfigError, WeakgroundError


@dataclass
class CaptionTrainSet:
    """Training images and their caption texts, nothing else.

    Attributes:
        images: ``[N, S, S, 3]`` uint8, resized to ``S x S`` (aspect ratio not kept: the methods are fully
            convolutional and the captions' left/right/above words survive a resize).
        captions: per image, its non-empty caption strings.
        image_ids: per image, its id in the dataset.
    """

    images: np.ndarray
    captions: list[list[str]]
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def load_caption_train_set(spec: str, split: str, size: int, progress: bool = False) -> CaptionTrainSet:
    """Read ``split`` of ``spec`` into memory as images + caption texts (records' phrases and boxes dropped)."""
    from tqdm.auto import tqdm

    from weakground.data.readers import read_dataset

    if size < 32:
        raise ConfigError(f"data.image_size must be >= 32, got {size}")
    records = read_dataset(spec, split=split).records
    images, captions, ids = [], [], []
    for record in tqdm(records, disable=not progress, desc=f"load {split} images", unit="image", leave=False):
        texts = [c.text for c in record.captions if c.text.strip()]
        if not texts or record.path is None:
            continue
        read = read_square(record.path, size)
        if read is None:
            continue
        images.append(read[0])
        captions.append(texts)
        ids.append(record.image_id)
    if not images:
        raise WeakgroundError(f"{spec}: split {split!r} has no image with a caption to train on")
    return CaptionTrainSet(np.stack(images), captions, ids)


def caption_batches(train_set: CaptionTrainSet, batch_size: int, rng: np.random.Generator,
                    features: CaptionFeatures | None = None) -> Iterator[dict[str, Any]]:
    """Shuffled batches of ``{"images": [B, 3, S, S] float in [0, 1], "captions": B strings}``.

    Each image appears once per epoch with one of its captions drawn at random; the other images' captions
    in the batch are its negatives. The last incomplete batch is dropped (ranking losses want full batches).
    No augmentation: an image is the same array every epoch, which is what makes ``features`` (the frozen
    encoders' precomputed output, :mod:`weakground.engine.feature_cache`) exact. They are added to the batch
    without changing what the generator draws, so a cached run sees the same order and captions.
    """
    order = rng.permutation(len(train_set))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        images = torch.from_numpy(train_set.images[idx]).permute(0, 3, 1, 2).float().div_(255.0)
        captions = [train_set.captions[i][rng.integers(len(train_set.captions[i]))] for i in idx]
        batch = {"images": images, "captions": captions}
        yield batch if features is None else {**batch, **features.batch(idx, captions)}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"pointing_accuracy": report["pointing_accuracy"],
            "attention_correctness": report["attention_correctness"],
            "center_baseline": report["baselines"]["center"], "random_baseline": report["baselines"]["random"],
            "n_queries": report["n_queries"], "n_images": report["n_images"],
            "recall": report.get("recall"), "box_accuracy": report.get("box_accuracy"),
            "presence_auroc": report.get("presence", {}).get("auroc")}


@dataclass
class CaptionData:
    spec: str  # FORMAT:PATH the splits are read from
    train: CaptionTrainSet


@TASKS.register("caption_grounding")
class CaptionGrounding(Task):
    name = "caption_grounding"
    best_key = "pointing_accuracy"

    def check_method(self, model: Any, config: ExperimentConfig) -> None:
        if not model.has_joint_space:
            raise ConfigError(f"method {config.method.name!r} does not learn from captions (it has no joint "
                              f"image-text space); caption data needs multilevel, dsve_loc, matchmap or "
                              f"mcb_attention with query: caption")

    def load_data(self, config: ExperimentConfig, progress: bool) -> CaptionData:
        from weakground.data.sources import dataset_spec

        spec = dataset_spec(config.data, progress)
        return CaptionData(spec, load_caption_train_set(spec, "train", config.data.image_size, progress))

    def report_header(self, config: ExperimentConfig, data: CaptionData) -> dict[str, Any]:
        return {"dataset": data.spec, "n_train_images": len(data.train)}

    def batches(self, model: Any, config: ExperimentConfig, data: CaptionData) -> tuple[Batches, int]:
        batch_size = config.train.batch_size
        features = caption_features(model, data.train.images, data.train.captions, config.train.cache_features,
                                    config.train.amp)
        return (lambda rng: caption_batches(data.train, batch_size, rng, features)), len(data.train) // batch_size

    def validate(self, config: ExperimentConfig, data: CaptionData, device: torch.device
                 ) -> Callable[[Any], dict[str, float]]:
        from weakground.engine.phrase_eval import evaluate_phrase_grounding

        n_val = max(1, config.data.n_val)

        def validate(m: torch.nn.Module) -> dict[str, float]:
            r = evaluate_phrase_grounding(m, data.spec, "val", max_images=n_val, device=device)
            return {"pointing_accuracy": r["pointing_accuracy"], "attention_correctness": r["attention_correctness"],
                    "t2i_R@1": r.get("recall", {}).get("text_to_image", {}).get("R@1", float("nan"))}

        return validate

    def after_training(self, model: Any, config: ExperimentConfig, data: CaptionData, device: torch.device,
                       checkpoint: Path, report: dict[str, Any]) -> ExperimentConfig:
        """Calibrate presence on validation (Platt scaling of the method's presence scores, present phrases
        against other images' phrases) and store it in the checkpoint, so ``locate`` can say "not found"."""
        import dataclasses

        from weakground.engine.phrase_eval import evaluate_phrase_grounding
        from weakground.metrics import fit_platt

        val = evaluate_phrase_grounding(model, data.spec, "val", max_images=max(1, config.data.n_val), device=device,
                                        presence_scores=True)["presence"]
        if not val["n_present"] or not val["n_absent"]:
            print("presence not calibrated: the validation split gave no present and absent phrases")
            return config
        calibration = fit_platt(val["present_scores"], val["absent_scores"])
        config = dataclasses.replace(config, eval=dataclasses.replace(
            config.eval, presence_calibration=calibration.to_list()))
        store_config_in_checkpoint(model, config, checkpoint)
        report["presence_calibration"] = {"chosen": calibration.to_list(), "criterion": "Platt fit on validation",
                                          "val_auroc": val["auroc"], "n_present": val["n_present"],
                                          "n_absent": val["n_absent"]}
        print(f"presence calibrated on validation (AUROC {val['auroc']:.3f} over {val['n_present']} present and "
              f"{val['n_absent']} absent phrases)")
        return config

    def test(self, model: Any, config: ExperimentConfig, data: CaptionData, device: torch.device, run_dir: Path,
             progress: bool, figure: bool, report: dict[str, Any]) -> None:
        from weakground.data.sources import extra_test_splits
        from weakground.engine.phrase_eval import evaluate_phrase_grounding

        for split in ["test", *extra_test_splits(config.data)]:
            overlays = run_dir / "overlays" / split if figure else None
            full = evaluate_phrase_grounding(model, data.spec, split, device=device, progress=progress,
                                             visualize_dir=overlays, n_visualize=12)
            report[split] = {**_summary(full), "protocol": full["protocol"], "by_type": full["by_type"]}
            print(f"{split}: pointing {full['pointing_accuracy']:.3f} (center {full['baselines']['center']:.3f}, "
                  f"random {full['baselines']['random']:.3f}), attention correctness "
                  f"{full['attention_correctness']:.3f}, {full['n_queries']} queries")

    def print_summary(self, config: ExperimentConfig, report: dict[str, Any], out: Path) -> None:
        # the per-split lines were printed as each split was scored
        print(f"\n{config.name}: {config.method.name} on {config.data.name}; report: {out / 'report.json'}")
