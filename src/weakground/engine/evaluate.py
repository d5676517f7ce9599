"""Evaluation runner for label-level grounding (Fang et al.'s multi-MNIST protocol).

For every test image the method is asked every class. For each class present in the image, its heatmap
(resized to the image) gives boxes by :func:`~weakground.metrics.heatmap_to_boxes`; the box around the global
peak is scored by IoU with the nearest ground-truth box of that class (average IoU, Table 1), all boxes with
their peak values feed per-class AP at each IoU threshold (Table 2), and the peak's position gives a pointing hit.
With ``eval.absent_detections: count`` (the default) the boxes of the classes absent from the image feed AP too,
as false positives, as detection AP counts them: a confident blob on an absent digit's map costs precision.
(``ignore``: only the present classes' boxes are scored, the protocol of the earlier tables, which such a blob
leaves unchanged.) For classes absent from the image, the peak value is also compared with the present classes'
peaks (AUROC): a map that stays blank for an absent digit scores 1.0. The ground-truth boxes are the digits' tight
ink boxes, or with ``eval.ground_truth: patch`` the 28x28 patches they were pasted into (Fang et al. does not say
which it scored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from weakground.config import EvalConfig
from weakground.data.batches import images_to_tensor
from weakground.errors import ConfigError
from weakground.methods.base import check_choice
from weakground.engine.inference import ground_maps
from weakground.metrics import auroc, box_iou, class_average_precision, mean_ap, peak_box, resize_heatmap


GROUND_TRUTH_BOXES = {"ink": "tight box of each digit's ink, pixel edges",
                      "patch": "the 28x28 patch each digit was pasted into (its grid cell), pixel edges"}
ABSENT_DETECTIONS = {"count": "the boxes on absent classes' maps are false positives (detection AP)",
                     "ignore": "only the present classes' maps are boxed (absent false positives not seen)"}


def check_ground_truth(config: EvalConfig) -> None:
    """Raises ConfigError, in one line, for an unknown ``eval.ground_truth`` or ``eval.absent_detections``."""
    check_choice(config, "ground_truth", tuple(GROUND_TRUTH_BOXES), section="eval")
    check_choice(config, "absent_detections", tuple(ABSENT_DETECTIONS), section="eval")


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
        "absent_detections": ABSENT_DETECTIONS[config.absent_detections],
        "map": "mean of AP over the IoU thresholds",
        "iou_thresholds": list(config.iou_thresholds),
        "pointing": "hit if the resized map's argmax lies inside a ground-truth box of the queried class",
        "absent_auroc": "AUROC separating the map peaks of present classes (positives) from absent ones",
        "ground_truth_boxes": GROUND_TRUTH_BOXES[config.ground_truth],
    }


@dataclass
class _Tally:
    """What the label evaluator accumulates over the test images."""

    ious: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    pos_peaks: list[float] = field(default_factory=list)
    neg_peaks: list[float] = field(default_factory=list)
    detections: list[tuple] = field(default_factory=list)
    ground_truth: list[tuple] = field(default_factory=list)

    def add_image(self, i: int, maps: torch.Tensor, boxes: torch.Tensor, labels: np.ndarray, names: list[str],
                  threshold: float, absent_detections: bool = True) -> None:
        """Score one image's ``[K, H, W]`` maps (every class asked) against its boxes and labels; with
        ``absent_detections`` the absent classes' boxes are detections too (with no ground truth: false positives)."""
        present = [c for c in range(len(names)) if c in labels]
        absent = [c for c in range(len(names)) if c not in present]
        for c in range(len(names)):
            (self.pos_peaks if c in present else self.neg_peaks).append(float(maps[c].max()))
        if absent_detections and absent:
            for c, found in zip(absent, ground_maps(maps[absent], [names[c] for c in absent], threshold)):
                self.detections.append((i, c, torch.tensor(found.boxes, dtype=torch.float32).reshape(-1, 4),
                                        torch.tensor(found.box_scores, dtype=torch.float32)))
        for c, found in zip(present, ground_maps(maps[present], [names[c] for c in present], threshold)):
            gt = boxes[torch.from_numpy(labels == c)]
            self.ground_truth.append((i, c, gt))
            self.detections.append((i, c, torch.tensor(found.boxes, dtype=torch.float32).reshape(-1, 4),
                                    torch.tensor(found.box_scores, dtype=torch.float32)))
            box, _ = peak_box(maps[c], threshold)
            self.ious.append(float(box_iou(box[None], gt).max()))
            x, y = found.point
            self.hits.append(bool(((gt[:, 0] <= x) & (x < gt[:, 2]) & (gt[:, 1] <= y) & (y < gt[:, 3])).any()))

    def report(self, config: EvalConfig, names: list[str]) -> dict[str, Any]:
        report: dict[str, Any] = {
            "avg_iou": 100.0 * float(np.mean(self.ious)) if self.ious else float("nan"),
            "pointing_accuracy": float(np.mean(self.hits)) if self.hits else float("nan"),
            "absent_auroc": auroc(np.array(self.pos_peaks), np.array(self.neg_peaks)),
        }
        per_class, aps = {}, []
        for t in config.iou_thresholds:
            ap = class_average_precision(self.detections, self.ground_truth, t)
            key = f"ap{round(t * 100):d}"
            report[key] = 100.0 * mean_ap(ap)
            per_class[key] = {names[c]: 100.0 * v for c, v in sorted(ap.items())}
            aps.append(report[key])
        report["map"] = float(np.mean(aps)) if aps else float("nan")
        report["ap_per_class"] = per_class
        return report


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
    tally = _Tally()
    for start in tqdm(range(0, n, config.batch_size), disable=not progress, desc="evaluate", leave=False):
        stop = min(n, start + config.batch_size)
        images = images_to_tensor(dataset.images[start:stop]).to(device)
        maps = resize_heatmap(model.grounding_maps(images, names).float(), tuple(size)).cpu()  # [B, K, H, W]
        for b in range(stop - start):
            tally.add_image(start + b, maps[b], torch.as_tensor(all_boxes[start + b], dtype=torch.float32),
                            np.asarray(dataset.labels[start + b]), names, config.box_threshold,
                            config.absent_detections == "count")
    report = tally.report(config, names)
    report["n_images"] = n
    report["n_queries"] = len(tally.ious)
    report["protocol"] = protocol_description(config)
    return report


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")


def label_summary_rows(test: dict) -> list[tuple[str, str]]:
    """The multi-MNIST report's headline numbers (AP per IoU threshold, mAP, IoU, pointing, absent AUROC)."""
    rows = [(k, f"{test[k]:.2f}") for k in test if k.startswith("ap") and k[2:].isdigit()]
    rows += [("map (mean over thresholds)", f"{test['map']:.2f}"), ("avg_iou", f"{test['avg_iou']:.2f}"),
             ("pointing_accuracy", f"{test['pointing_accuracy']:.3f}"), ("absent_auroc", f"{test['absent_auroc']:.3f}"),
             ("queries", str(test["n_queries"]))]
    return rows
