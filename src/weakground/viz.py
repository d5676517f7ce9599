"""Figures people would rather look at than read: heatmap overlays and Fang et al.'s Fig. 3 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def grounding_figure(model: Any, dataset: Any, path: Path, box_threshold: float, device: Any = "cpu",
                     n_rows: int = 4, seed: int = 0) -> Path:
    """A Fig. 3-style figure: per test image, the input, the grounded region (red) with the predicted box
    (red) and the ground-truth box (green), the attention map of the queried digit, and the attention map for
    a digit that is *not* in the image, on the same colour scale.
    """
    from weakground.data.batches import images_to_tensor
    from weakground.metrics import peak_box, resize_heatmap

    plt = _pyplot()
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(dataset), size=min(n_rows, len(dataset)), replace=False)
    names = list(model.class_names)
    images = images_to_tensor(dataset.images[rows]).to(device)
    maps = resize_heatmap(model.grounding_maps(images, names).float(), tuple(dataset.images.shape[1:])).cpu()
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    vmax = float(maps.max()) or 1.0
    for r, i in enumerate(rows):
        img = dataset.images[i]
        labels = np.asarray(dataset.labels[i])
        query = int(rng.choice(labels))
        absent = [c for c in range(len(names)) if c not in labels]
        absent_query = int(rng.choice(absent)) if absent else query
        hm = maps[r, query]
        box, _ = peak_box(hm, box_threshold)
        ax = axes[r]
        ax[0].imshow(img, cmap="gray")
        ax[0].set_title("input")
        region = (hm >= box_threshold * hm.max()).numpy()
        overlay = np.stack([img / 255.0] * 3, -1)
        overlay[region] = 0.5 * overlay[region] + 0.5 * np.array([1.0, 0.0, 0.0])
        ax[1].imshow(overlay)
        for gt in np.asarray(dataset.boxes[i])[labels == query]:
            _rect(ax[1], gt, "lime")
        _rect(ax[1], box.numpy(), "red")
        ax[1].set_title(f"grounded '{names[query]}'")
        ax[2].imshow(hm, cmap="jet", vmin=0, vmax=vmax)
        ax[2].set_title(f"attention '{names[query]}'")
        ax[3].imshow(maps[r, absent_query], cmap="jet", vmin=0, vmax=vmax)
        ax[3].set_title(f"absent '{names[absent_query]}'")
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle("red: region >= threshold x peak and its box; green: ground truth", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _rect(ax: Any, box: Any, color: str) -> None:
    import matplotlib.patches as patches

    x1, y1, x2, y2 = [float(v) for v in box]
    # Boxes use pixel edges; imshow puts pixel centres on integers, so edges sit at -0.5 offsets.
    ax.add_patch(patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))


def overlay_figure(image: np.ndarray, heatmaps: list[np.ndarray], phrases: list[str], boxes: list[list[Any]],
                   points: list[tuple[int, int]], path: Path) -> Path:
    """One panel per phrase: the image, its heatmap blended on top, the peak point and the boxes."""
    plt = _pyplot()
    n = len(phrases)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    gray = image.ndim == 2
    for ax, hm, phrase, bxs, (px, py) in zip(axes[0], heatmaps, phrases, boxes, points):
        ax.imshow(image, cmap="gray" if gray else None)
        ax.imshow(hm, cmap="jet", alpha=0.45, vmin=0, vmax=max(float(hm.max()), 1e-6))
        for b in bxs:
            _rect(ax, b, "white")
        ax.plot([px], [py], marker="x", color="white", markersize=10, mew=2)
        ax.set_title(phrase)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def caption_figure(image: np.ndarray, objects: list[dict], caption: str, path: Path) -> Path:
    """The image with each grounded object word's box and label, the caption as the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1] + 0.6))
    ax.imshow(image)
    colours = plt.get_cmap("tab10")
    for i, obj in enumerate(objects):
        _rect(ax, obj["box"], colours(i % 10))
        ax.text(obj["box"][0], obj["box"][1] - 2, obj["word"], color="white", fontsize=9,
                bbox={"facecolor": colours(i % 10), "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    ax.set_title(caption, fontsize=10)
    ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
