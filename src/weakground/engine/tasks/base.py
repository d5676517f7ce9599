"""The task interface: what the one training driver (:mod:`weakground.engine.driver`) runs.

A task supplies everything that differs between kinds of supervision: the class names a method is built with,
its data, its batches, its validation score, what happens before and after the shared training loop, and the
test report. The dataset registry says which task consumes a dataset (``DatasetSource.task``), so the driver
never branches on a dataset's name. Registered tasks: ``label_grounding`` (multi-MNIST image labels, Fang et
al.'s protocol) and ``caption_grounding`` (images with captions only: the scenes and the disk formats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch

from weakground.config import ExperimentConfig
from weakground.registry import Registry

TASKS: Registry = Registry("task")

Batches = Callable[[np.random.Generator], Iterable[dict[str, Any]]]


class Task:
    """Base class of training tasks; the driver calls these in order (see :func:`~weakground.engine.driver.run_experiment`)."""

    name: ClassVar[str]
    best_key: ClassVar[str]  # the validation score that picks the best checkpoint (higher is better)

    def class_names(self, config: ExperimentConfig, progress: bool = False) -> list[str]:
        """The vocabulary the method is built with: digit labels, a captioner's words (empty for caption
        grounding, whose methods read any phrase)."""
        return []

    def check_method(self, model: Any, config: ExperimentConfig) -> None:
        """Refuse, in one line, a method that cannot learn from this task's supervision."""

    def load_data(self, config: ExperimentConfig, progress: bool) -> Any:
        raise NotImplementedError

    def report_header(self, config: ExperimentConfig, data: Any) -> dict[str, Any]:
        """Facts about the data for the report's head."""
        return {}

    def before_training(self, model: Any, config: ExperimentConfig, run_dir: Path, progress: bool, resume: bool,
                        report: dict[str, Any]) -> None:
        """A stage before the method's own training (backbone pretraining), when the run starts from nothing."""

    def batches(self, model: Any, config: ExperimentConfig, data: Any) -> tuple[Batches, int]:
        """``(make_batches(rng), steps_per_epoch)`` for the shared trainer; no batch may carry a box."""
        raise NotImplementedError

    def validate(self, config: ExperimentConfig, data: Any, device: torch.device) -> Callable[[Any], dict[str, float]]:
        raise NotImplementedError

    def after_training(self, model: Any, config: ExperimentConfig, data: Any, device: torch.device,
                       checkpoint: Path, report: dict[str, Any]) -> ExperimentConfig:
        """Settings chosen on validation once the best weights are loaded (returned as the new config)."""
        return config

    def test(self, model: Any, config: ExperimentConfig, data: Any, device: torch.device, run_dir: Path,
             progress: bool, figure: bool, report: dict[str, Any]) -> None:
        """Score the test split(s) into ``report``."""
        raise NotImplementedError

    def print_summary(self, config: ExperimentConfig, report: dict[str, Any], out: Path) -> None:
        """What ``weakground train`` prints at the end."""


def store_config_in_checkpoint(model: Any, config: ExperimentConfig, checkpoint: Path) -> None:
    """Write ``config`` (with the settings chosen on validation after training) into ``checkpoint``'s metadata,
    so ``eval`` and ``locate`` use the same choices."""
    from weakground.config import to_dict
    from weakground.engine.checkpoint import read_checkpoint, save_checkpoint

    _, meta = read_checkpoint(checkpoint)
    meta["config"] = to_dict(config)
    save_checkpoint(checkpoint, model, meta)


def read_square(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """An RGB training image resized to ``size x size`` (aspect not kept: the captions' left/right/above words
    survive a resize) and its own ``(height, width)``; ``None``, with a line saying why, for an unreadable file,
    which the caption tasks skip rather than stop on."""
    from PIL import Image

    from weakground.errors import WeakgroundError
    from weakground.io import read_image

    try:
        pixels = read_image(path, channels=3)
    except WeakgroundError as exc:
        print(f"skipped {path}: {exc}")
        return None
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR)), pixels.shape[:2]
