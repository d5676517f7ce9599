"""Label-grounding datasets as in-memory splits: a :class:`~weakground.config.DataConfig` -> train/val/test sets.

The builders are registered with their datasets in :mod:`weakground.data.sources`; this module picks the one
``config.name`` names.
"""

from __future__ import annotations

from typing import Any

from weakground.config import DataConfig
from weakground.data.sources import DatasetSource, dataset_source
from weakground.errors import ConfigError


def _label_source(name: str) -> DatasetSource:
    source = dataset_source(name)  # a clear error for an unknown dataset name
    if source.build_splits is None:
        raise ConfigError(f"data.name {name!r} is a {source.task} dataset, read from files: it has no "
                          f"in-memory label splits")
    return source


def build_splits(config: DataConfig, splits: tuple[str, ...] = ("train", "val", "test"), progress: bool = False) -> dict[str, Any]:
    """``{split: set}`` for each of ``splits`` of the label dataset ``config.name``."""
    builder = _label_source(config.name).build_splits
    assert builder is not None
    return builder(config, tuple(splits), progress)


def class_names(config: DataConfig) -> list[str]:
    """The labels of the label dataset ``config.name``, in class-index order."""
    return list(_label_source(config.name).class_names)
