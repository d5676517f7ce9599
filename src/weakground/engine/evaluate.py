"""Evaluation runner for label-level grounding (seed 000's multi-MNIST protocol).

For every test image the method is asked every class. For each class present in the image, its heatmap
(resized to the image) gives boxes by :func:`~weakground.metrics.heatmap_to_boxes`; the box around the global
peak is scored by IoU with the nearest ground-truth box of that class (average IoU, Table 1), all boxes with
their peak values feed per-class AP at each IoU threshold (Table 2), and the peak's position gives a pointing hit.
For classes absent from the image, the peak value is compared with the present classes' peaks (AUROC): a map
that stays blank for an absent digit scores 1.0. The ground-truth boxes are the digits' tight ink boxes, or with
``eval.ground_truth: patch`` the 28x28 patches they were pasted into (seed 000 does not say which it scored).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from weakground.config import EvalConfig
from weakground.data.batches import images_to_tensor
from weakground.errors import ConfigError
from weakground.methods.base import check_choice
from weakground.metrics import auroc, box_iou, class_average_precision, heatmap_to_boxes, mean_ap, peak_box, resize_heatmap


GROUND_TRUTH_BOXES = {"ink": "tight box of each digit's ink, pixel edges",
                      "patch": "the 28x28 patch each digit was pasted into (its grid cell), pixel edges"}


def check_ground_truth(config: EvalConfig) -> None:
    """Raises ConfigError, in one line, for an unknown ``eval.ground_truth``."""
    check_choice(config, "ground_truth", tuple(GROUND_TRUTH_BOXES), section="eval")


def ground_truth_boxes(dataset: Any, config: EvalConfig) -> list[np.ndarray]:
    """The per-image boxes ``config.ground_truth`` names.

    Raises:
        ConfigError: an unknown ``ground_truth``, or ``patch`` on a set that carries no patch boxes.
    """
    check_ground_truth(config)
    if config.ground_truth == "ink":
        return dataset.boxes
    if len(dataset.patch_boxes) != len(dataset.boxes):
        raise ConfigError("eval.ground_truth 'patch': this multi-MNIST set carries no patch boxes")
    return dataset.patch_boxes


def protocol_description(config: EvalConfig) -> dict[str, Any]:
    return {
        "queries": "every class present in a test image (one query per class, several boxes allowed)",
        "heatmap_to_boxes": f"8-connected components of pixels >= {config.box_threshold} x map maximum, after "
                            "bilinear resizing to the image; box score = component peak",
        "avg_iou": "IoU of the box around the global peak with the closest ground-truth box of the queried class",
        "ap": "VOC all-point AP per class over all test images, greedy matching by score, mean over classes",
        "map": "mean of AP over the IoU thresholds",
        "iou_thresholds": list(config.iou_thresholds),
        "pointing": "hit if the resized map's argmax lies inside a ground-truth box of the queried class",
        "absent_auroc": "AUROC separating the map peaks of present classes (positives) from absent ones",
        "ground_truth_boxes": GROUND_TRUTH_BOXES[config.ground_truth],
    }


@torch.no_grad()
def evaluate_label_grounding(
    model: nn.Module, dataset: Any, config: EvalConfig, device: torch.device | str = "cpu",
    max_images: int | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Score ``model.grounding_maps`` on a :class:`~weakground.data.multimnist.MultiMnistSet`.

    Returns:
        ``avg_iou``, ``ap30``/``ap40``/``ap50`` (named by threshold), ``map`` (percent), ``pointing_accuracy``
        and ``absent_auroc`` (0-1), ``ap_per_class``, counts and the ``protocol``.
    """
    from tqdm.auto import tqdm

    all_boxes = ground_truth_boxes(dataset, config)
    model.eval()
    names = list(model.class_names)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    size = dataset.images.shape[1:]
    ious, hits, pos_peaks, neg_peaks = [], [], [], []
    detections, ground_truth = [], []
    for start in tqdm(range(0, n, config.batch_size), disable=not progress, desc="evaluate", leave=False):
        stop = min(n, start + config.batch_size)
        images = images_to_tensor(dataset.images[start:stop]).to(device)
        maps = resize_heatmap(model.grounding_maps(images, names).float(), tuple(size)).cpu()  # [B, K, H, W]
        for b in range(stop - start):
            i = start + b
            boxes = torch.as_tensor(all_boxes[i], dtype=torch.float32)
            labels = np.asarray(dataset.labels[i])
            for c in range(len(names)):
                hm = maps[b, c]
                peak = float(hm.max())
                if c not in labels:
                    neg_peaks.append(peak)
                    continue
                pos_peaks.append(peak)
                gt = boxes[torch.from_numpy(labels == c)]
                ground_truth.append((i, c, gt))
                det_boxes, det_scores = heatmap_to_boxes(hm, config.box_threshold)
                detections.append((i, c, det_boxes, det_scores))
                box, _ = peak_box(hm, config.box_threshold)
                ious.append(float(box_iou(box[None], gt).max()))
                y, x = divmod(int(hm.argmax()), hm.shape[1])
                hits.append(bool(((gt[:, 0] <= x) & (x < gt[:, 2]) & (gt[:, 1] <= y) & (y < gt[:, 3])).any()))
    report: dict[str, Any] = {
        "avg_iou": 100.0 * float(np.mean(ious)) if ious else float("nan"),
        "pointing_accuracy": float(np.mean(hits)) if hits else float("nan"),
        "absent_auroc": auroc(np.array(pos_peaks), np.array(neg_peaks)),
    }
    per_class = {}
    aps = []
    for t in config.iou_thresholds:
        ap = class_average_precision(detections, ground_truth, t)
        key = f"ap{round(t * 100):d}"
        report[key] = 100.0 * mean_ap(ap)
        per_class[key] = {names[c]: 100.0 * v for c, v in sorted(ap.items())}
        aps.append(report[key])
    report["map"] = float(np.mean(aps)) if aps else float("nan")
    report["ap_per_class"] = per_class
    report["n_images"] = n
    report["n_queries"] = len(ious)
    report["protocol"] = protocol_description(config)
    return report
