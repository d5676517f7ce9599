"""Detection-style scoring: greedy TP/FP matching and PASCAL VOC average precision.

Reference: Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010, and the VOC
2010+ devkit (``VOCevaldet`` / ``voc_eval.py``): all-point interpolated AP, greedy matching by descending
score, each ground-truth box matched at most once.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from weakground.metrics.boxes import box_iou

__all__ = ["match_detections", "average_precision", "class_average_precision", "mean_ap"]


def match_detections(det_boxes: Tensor, det_scores: Tensor, gt_boxes: Tensor, iou_threshold: float) -> Tensor:
    """Mark each detection of one (image, class) as true or false positive, VOC style.

    Detections are visited in descending score (stable: ties keep input order). For each one, take the
    ground-truth box with the highest IoU among *all* ground-truth boxes (first index on IoU ties). It is a
    true positive iff that IoU ``>= iou_threshold`` and that box is not yet matched; the box then becomes
    matched. Otherwise it is a false positive, including when its best box was already taken by a
    higher-scoring detection, even if another, still unmatched box overlaps it enough (this is the VOC devkit
    convention, not "best among the unmatched"). Duplicate detections of one object are therefore FPs.
    Note: the devkit tests ``IoU > threshold``; here a detection exactly at the threshold counts (``>=``).

    Args:
        det_boxes: ``[K, 4]`` xyxy detection boxes.
        det_scores: ``[K]`` their confidences.
        gt_boxes: ``[G, 4]`` xyxy ground-truth boxes (``G`` may be 0: then every detection is a FP).
        iou_threshold: in (0, 1].

    Returns:
        ``[K]`` bool, in the input order of the detections (not sorted), True for a true positive.
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    if det_scores.ndim != 1 or det_boxes.ndim != 2 or tuple(det_boxes.shape) != (det_scores.shape[0], 4):
        raise ValueError(f"det_boxes [K, 4] and det_scores [K] disagree: {tuple(det_boxes.shape)} vs "
                         f"{tuple(det_scores.shape)}")
    if gt_boxes.ndim != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must have shape [G, 4], got {tuple(gt_boxes.shape)}")
    k = det_scores.shape[0]
    is_tp = torch.zeros(k, dtype=torch.bool)
    if k == 0 or gt_boxes.shape[0] == 0:
        return is_tp.to(det_scores.device)
    iou = box_iou(det_boxes.detach().cpu(), gt_boxes.detach().cpu())  # [K, G]
    best_iou, best_gt = iou.max(dim=1)  # argmax: first index on ties
    order = torch.sort(det_scores.detach().cpu(), descending=True, stable=True).indices.tolist()
    best_iou_l, best_gt_l = best_iou.tolist(), best_gt.tolist()
    matched = [False] * gt_boxes.shape[0]
    for i in order:
        g = best_gt_l[i]
        if best_iou_l[i] >= iou_threshold and not matched[g]:
            matched[g] = True
            is_tp[i] = True
    return is_tp.to(det_scores.device)


def average_precision(scores: Tensor, is_tp: Tensor, n_gt: int) -> float:
    """PASCAL VOC all-point interpolated average precision (VOC 2010+).

    Sort detections by score, descending (stable: ties keep input order). At rank ``r``,
    ``precision_r = TP_r / r`` and ``recall_r = TP_r / n_gt``. The precision envelope is
    ``p_env(r) = max_{r' >= r} precision_r'``, and::

        AP = sum_r (recall_r - recall_{r-1}) * p_env(r),     recall_0 = 0

    the exact area under the monotone (non-increasing) precision-recall envelope; only ranks that are true
    positives contribute. Undetected ground truth caps recall below 1, which lowers AP.

    Args:
        scores: ``[K]`` detection confidences.
        is_tp: ``[K]`` bool (or 0/1), whether each detection is a true positive (see :func:`match_detections`).
        n_gt: the number of ground-truth objects; must be >= the number of true positives.

    Returns:
        AP in [0, 1]; ``nan`` when ``n_gt == 0`` (undefined); ``0.0`` when there are no detections.
    """
    scores = torch.as_tensor(scores).detach().reshape(-1).cpu().double()
    is_tp = torch.as_tensor(is_tp).detach().reshape(-1).cpu().bool()
    if scores.shape != is_tp.shape:
        raise ValueError(f"scores and is_tp must have the same length, got {scores.numel()} and {is_tp.numel()}")
    if n_gt < 0:
        raise ValueError(f"n_gt must be >= 0, got {n_gt}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    n_tp = int(is_tp.sum())
    if n_tp > n_gt:
        raise ValueError(f"{n_tp} true positives but only n_gt={n_gt} ground-truth objects")
    if n_gt == 0:
        return float("nan")
    if scores.numel() == 0:
        return 0.0
    order = torch.sort(scores, descending=True, stable=True).indices
    tp = is_tp[order].double()
    tp_cum = torch.cumsum(tp, 0)
    precision = tp_cum / torch.arange(1, tp.numel() + 1, dtype=torch.float64)
    recall = tp_cum / n_gt
    envelope = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float(min(1.0, max(0.0, float((d_recall * envelope).sum()))))


def class_average_precision(
    detections: list[tuple[int, int, Tensor, Tensor]],
    ground_truth: list[tuple[int, int, Tensor]],
    iou_threshold: float,
) -> dict[int, float]:
    """Per-class VOC AP over a set of images.

    Detections and ground truth are grouped by ``(image_index, class)`` (several entries with the same key
    are concatenated). Each group's detections are matched against the same group's ground truth with
    :func:`match_detections` (a detection for a class with no ground truth in that image is a FP). Then, per
    class, all its detections over all images are pooled and scored by :func:`average_precision` with
    ``n_gt`` = that class's ground-truth boxes over all images.

    Args:
        detections: ``(image_index, class, boxes [K, 4], scores [K])`` tuples.
        ground_truth: ``(image_index, class, boxes [G, 4])`` tuples.
        iou_threshold: IoU needed for a true positive, in (0, 1].

    Returns:
        ``{class: AP}`` for every class with at least one ground-truth box (classes with none are omitted,
        and their detections ignored); sorted by class.
    """
    gt: dict[tuple[int, int], list[Tensor]] = defaultdict(list)
    for image, cls, boxes in ground_truth:
        gt[(int(image), int(cls))].append(torch.as_tensor(boxes).detach().cpu().float().reshape(-1, 4))
    n_gt: dict[int, int] = defaultdict(int)
    for (_, cls), parts in gt.items():
        n_gt[cls] += sum(p.shape[0] for p in parts)
    det: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = defaultdict(list)
    for image, cls, boxes, scores in detections:
        det[(int(image), int(cls))].append((torch.as_tensor(boxes).detach().cpu().float().reshape(-1, 4),
                                            torch.as_tensor(scores).detach().cpu().double().reshape(-1)))
    scores_by_class: dict[int, list[Tensor]] = defaultdict(list)
    tp_by_class: dict[int, list[Tensor]] = defaultdict(list)
    for (image, cls), parts in det.items():
        if n_gt.get(cls, 0) == 0:
            continue
        boxes = torch.cat([b for b, _ in parts])
        scores = torch.cat([s for _, s in parts])
        gt_boxes = torch.cat(gt[(image, cls)]) if (image, cls) in gt else torch.zeros(0, 4)
        scores_by_class[cls].append(scores)
        tp_by_class[cls].append(match_detections(boxes, scores, gt_boxes, iou_threshold))
    result = {}
    for cls in sorted(c for c, n in n_gt.items() if n > 0):
        scores = torch.cat(scores_by_class[cls]) if scores_by_class[cls] else torch.zeros(0, dtype=torch.float64)
        is_tp = torch.cat(tp_by_class[cls]) if tp_by_class[cls] else torch.zeros(0, dtype=torch.bool)
        result[cls] = average_precision(scores, is_tp, n_gt[cls])
    return result


def mean_ap(per_class: dict[int, float]) -> float:
    """Mean of the per-class APs, ignoring NaN entries; ``nan`` if nothing is left.

    Args:
        per_class: ``{class: AP}``, e.g. from :func:`class_average_precision`.

    Returns:
        The mean AP as a float.
    """
    values = [float(v) for v in per_class.values() if not math.isnan(float(v))]
    return sum(values) / len(values) if values else float("nan")
