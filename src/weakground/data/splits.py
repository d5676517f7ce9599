"""Dataset builders registered by name: a :class:`~weakground.config.DataConfig` -> train/val/test splits."""

from __future__ import annotations

from typing import Any

from weakground.config import DataConfig
from weakground.registry import DATASETS

CLASS_NAMES = {"multimnist": [str(d) for d in range(10)]}


@DATASETS.register("multimnist")
def multimnist_splits(config: DataConfig, splits: tuple[str, ...] = ("train", "val", "test"),
                      progress: bool = False) -> dict[str, Any]:
    """Train and val are composed from the train digit pool (different seeds), test from the disjoint test pool."""
    from weakground.data.multimnist import MultiMnistSpec, make_multimnist

    spec = MultiMnistSpec(
        layout=config.layout, grid=config.grid, cell=config.cell, jitter=config.jitter, canvas=config.canvas,
        min_digits=config.min_digits, max_digits=config.max_digits, max_overlap=config.max_overlap,
        noise_std=config.noise_std,
    )
    plan = {"train": ("train", config.n_train, config.seed), "val": ("train", config.n_val, config.seed + 1),
            "test": ("test", config.n_test, config.seed + 2)}
    return {s: make_multimnist(spec, plan[s][1], pool=plan[s][0], seed=plan[s][2], progress=progress) for s in splits}


def build_splits(config: DataConfig, splits: tuple[str, ...] = ("train", "val", "test"), progress: bool = False) -> dict[str, Any]:
    return DATASETS.get(config.name)(config, splits, progress)


def class_names(config: DataConfig) -> list[str]:
    DATASETS.get(config.name)  # a clear error for an unknown dataset name
    return CLASS_NAMES[config.name]
