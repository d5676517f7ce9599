"""The main job for caption-level methods: read images and captions, train with no box, score phrases.

Data flows one way: a dataset spec (``FORMAT:PATH``; the synthetic ``scenes`` are generated once into the cache
and read back through the Flickr30K Entities reader like any user dataset) -> :class:`CaptionTrainSet` (images
resized to ``data.image_size`` and caption *texts* only: phrases and boxes are dropped when the set is built, so
no box can reach a training step) -> batches ``{"images", "captions"}`` -> the shared :class:`Trainer` ->
:func:`evaluate_phrase_grounding` on ``val`` (model selection by pointing accuracy), then ``test`` and, for
scenes, ``test_unseen`` (held-out colour-category pairs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from weakground import __version__
from weakground.config import DataConfig, ExperimentConfig, to_dict
from weakground.engine.checkpoint import atomic_write_text, load_weights, read_checkpoint
from weakground.engine.trainer import Trainer, resolve_device, seed_everything
from weakground.errors import ConfigError, WeakgroundError

SCENES = "scenes"
_SCENES_LAYOUT_VERSION = 1  # bump when the generator's output changes, so stale caches are not reused


# ------------------------------------------------------------------------------------------------- data


def scenes_root(data: DataConfig, progress: bool = False) -> Path:
    """The cached Flickr30K-layout folder of the scenes ``data`` describes, generated on first use.

    The folder name is a hash of the spec and split sizes. It is written under a temporary name and renamed
    when complete, so an interrupted generation is never mistaken for a dataset.
    """
    from weakground.cache import cache_dir
    from weakground.data.scenes import SceneSpec, write_scenes

    spec = SceneSpec(seed=data.seed)
    counts = (data.n_train, data.n_val, data.n_test, data.n_test_unseen)
    key = hashlib.sha1(json.dumps([asdict(spec), counts, _SCENES_LAYOUT_VERSION]).encode()).hexdigest()[:12]
    root = cache_dir() / "scenes" / f"scenes-{key}"
    if (root / "Sentences").is_dir():
        return root
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    if progress:
        print(f"generating {sum(counts):,} synthetic scenes into {root} (once)")
    write_scenes(tmp, spec, *counts, coco=False)
    try:
        tmp.rename(root)
    except OSError:  # another process finished the same set first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def dataset_spec(data: DataConfig, progress: bool = False) -> str:
    """``FORMAT:PATH`` for the configured caption dataset."""
    from weakground.data.readers import FORMATS

    if data.name == SCENES:
        return f"flickr30k_entities:{scenes_root(data, progress)}"
    if data.name in FORMATS:
        if not data.path:
            raise ConfigError(f"data.name {data.name!r} reads a dataset from disk: set data.path to its root")
        return f"{data.name}:{data.path}"
    raise ConfigError(f"data.name {data.name!r}: caption methods train on {SCENES!r} or a dataset format "
                      f"({', '.join(sorted(FORMATS))}) with data.path")


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
    from weakground.io import read_image

    if size < 32:
        raise ConfigError(f"data.image_size must be >= 32, got {size}")
    records = read_dataset(spec, split=split).records
    images, captions, ids = [], [], []
    for record in tqdm(records, disable=not progress, desc=f"load {split} images", unit="image", leave=False):
        texts = [c.text for c in record.captions if c.text.strip()]
        if not texts or record.path is None:
            continue
        try:
            pixels = read_image(record.path, channels=3)
        except WeakgroundError as exc:
            print(f"skipped {record.path}: {exc}")
            continue
        images.append(np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR)))
        captions.append(texts)
        ids.append(record.image_id)
    if not images:
        raise WeakgroundError(f"{spec}: split {split!r} has no image with a caption to train on")
    return CaptionTrainSet(np.stack(images), captions, ids)


def caption_batches(train_set: CaptionTrainSet, batch_size: int, rng: np.random.Generator
                    ) -> Iterator[dict[str, Any]]:
    """Shuffled batches of ``{"images": [B, 3, S, S] float in [0, 1], "captions": B strings}``.

    Each image appears once per epoch with one of its captions drawn at random; the other images' captions
    in the batch are its negatives. The last incomplete batch is dropped (ranking losses want full batches).
    """
    order = rng.permutation(len(train_set))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        images = torch.from_numpy(train_set.images[idx]).permute(0, 3, 1, 2).float().div_(255.0)
        captions = [train_set.captions[i][rng.integers(len(train_set.captions[i]))] for i in idx]
        yield {"images": images, "captions": captions}


# -------------------------------------------------------------------------------------------- the job


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"pointing_accuracy": report["pointing_accuracy"],
            "attention_correctness": report["attention_correctness"],
            "center_baseline": report["baselines"]["center"], "random_baseline": report["baselines"]["random"],
            "n_queries": report["n_queries"], "n_images": report["n_images"],
            "recall": report.get("recall")}


def run_caption_experiment(config: ExperimentConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                           figure: bool = True) -> dict[str, Any]:
    """Train ``config``'s method on captions only and score its phrase heatmaps; writes ``report.json``."""
    from weakground.engine.phrase_eval import evaluate_phrase_grounding
    from weakground.engine.pipeline import checkpoint_meta, configure_inference, init_from_checkpoint, machine_description
    from weakground.methods import create_method

    seed_everything(config.train.seed)
    t0 = time.time()
    model = create_method(config.method.name, config.backbone, [], config.method.params)
    if not getattr(model, "has_joint_space", False):
        raise ConfigError(f"method {config.method.name!r} does not learn from captions (it has no joint "
                          f"image-text space); caption data needs multilevel, dsve_loc, matchmap or "
                          f"mcb_attention with query: caption")
    configure_inference(model, config)  # validation and the test report read images as training does
    init_from = init_from_checkpoint(model, config)
    spec = dataset_spec(config.data, progress)
    train_set = load_caption_train_set(spec, "train", config.data.image_size, progress)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(to_dict(config), indent=2))
    device = resolve_device(config.train.device)
    n_val = max(1, config.data.n_val)

    def validate(m: torch.nn.Module) -> dict[str, float]:
        r = evaluate_phrase_grounding(m, spec, "val", max_images=n_val, device=device)
        return {"pointing_accuracy": r["pointing_accuracy"], "attention_correctness": r["attention_correctness"],
                "t2i_R@1": r.get("recall", {}).get("text_to_image", {}).get("R@1", float("nan"))}

    train = config.train
    trainer = Trainer(model, train, run_dir, checkpoint_meta(config, []), stage="train", evaluate=validate,
                      best_key="pointing_accuracy", progress=progress)
    result = trainer.fit(lambda rng: caption_batches(train_set, train.batch_size, rng),
                         len(train_set) // train.batch_size, resume=resume)
    state, _ = read_checkpoint(trainer.best_path)
    load_weights(trainer.best_path, model, state)
    model.to(device).eval()
    report: dict[str, Any] = {
        "name": config.name, "method": config.method.name, "dataset": spec, "machine": machine_description(),
        "weakground_version": __version__, "n_train_images": len(train_set),
        "train": {"history": result["history"], "best_val": result["best"], "seconds": round(time.time() - t0, 1),
                  "images_per_second": _mean_throughput(result["history"]), "checkpoint": str(trainer.best_path)},
    }
    if init_from is not None:
        report["init_from"] = init_from
    splits = ["test"] + (["test_unseen"] if config.data.name == SCENES and config.data.n_test_unseen > 0 else [])
    for split in splits:
        overlays = run_dir / "overlays" / split if figure else None
        full = evaluate_phrase_grounding(model, spec, split, device=device, progress=progress,
                                         visualize_dir=overlays, n_visualize=12)
        report[split] = {**_summary(full), "protocol": full["protocol"], "by_type": full["by_type"]}
        print(f"{split}: pointing {full['pointing_accuracy']:.3f} (center {full['baselines']['center']:.3f}, "
              f"random {full['baselines']['random']:.3f}), attention correctness "
              f"{full['attention_correctness']:.3f}, {full['n_queries']} queries")
    report["config"] = to_dict(config)
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    return report


def _mean_throughput(history: list[dict[str, Any]]) -> float | None:
    rates = [h["images_per_second"] for h in history if "images_per_second" in h]
    return round(sum(rates) / len(rates), 1) if rates else None
