"""Batches for label-level grounding: images plus the labels to query in each, never a box.

The boxes of a :class:`~weakground.data.multimnist.MultiMnistSet` stay in the dataset for evaluation; the
training batches built here carry only images and image-level labels, which is what makes the supervision weak.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor


def images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 ``[N, H, W]`` -> float ``[N, 1, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def label_query_batches(
    images: np.ndarray,
    present: list[np.ndarray],
    batch_size: int,
    queries_per_image: int,
    absent_per_image: int,
    rng: np.random.Generator,
    n_classes: int = 10,
) -> Iterator[dict[str, Tensor]]:
    """Yield shuffled training batches.

    Args:
        images: uint8 ``[N, H, W]``.
        present: per image, the labels it contains (at least one).
        batch_size: images per batch; the last, smaller batch is dropped so batch statistics stay stable.
        queries_per_image: P present labels drawn (with replacement) per image.
        absent_per_image: A labels drawn from those the image lacks (0 for none).
        rng: the epoch's random generator (fixes order and draws).

    Yields:
        ``{"images": [B, 1, H, W] float, "labels": [B, P] long}`` plus ``"absent": [B, A] long`` when A > 0.
    """
    order = rng.permutation(len(images))
    all_labels = np.arange(n_classes)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        labels = np.stack([rng.choice(present[i], size=queries_per_image) for i in idx])
        batch = {"images": images_to_tensor(images[idx]), "labels": torch.from_numpy(labels).long()}
        if absent_per_image > 0:
            absent = [np.setdiff1d(all_labels, present[i]) for i in idx]
            batch["absent"] = torch.from_numpy(
                np.stack([rng.choice(a if len(a) else all_labels, size=absent_per_image) for a in absent])
            ).long()
        yield batch


def classification_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator, noise_std: float = 0.0
) -> Iterator[dict[str, Tensor]]:
    """Shuffled single-digit batches for backbone pretraining, with the same Gaussian noise as the scenes."""
    order = rng.permutation(len(images))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        x = images_to_tensor(images[idx])
        if noise_std > 0:
            x = (x + noise_std * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))).clamp_(0, 1)
        yield {"images": x, "labels": torch.from_numpy(labels[idx]).long()}
