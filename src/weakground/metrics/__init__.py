"""Metrics: pure functions on boxes, heatmaps and scores (no model knowledge).

Boxes are ``xyxy`` in pixel edges, 0-based, with exclusive ``x2``/``y2``: ``area = (x2 - x1) * (y2 - y1)``.
"""

from weakground.metrics.boxes import box_iou, heatmap_to_boxes, peak_box, resize_heatmap
# pycocoevalcap (and its Java tools) is imported only inside caption_scores, so this import stays light.
from weakground.metrics.captioning import CAPTION_METRICS, caption_scores, grounding_f1, simple_tokenize
from weakground.metrics.calibration import PresenceCalibration, fit_platt
from weakground.metrics.instances import BoxRule, instance_boxes
from weakground.metrics.detection import average_precision, class_average_precision, match_detections, mean_ap
from weakground.metrics.pointing import (
    PointingProtocol,
    attention_correctness,
    box_accuracy,
    breakdown_by_type,
    center_baseline,
    center_baseline_point,
    heatmap_point,
    pointing_game,
    pointing_hit,
    random_baseline_accuracy,
)
from weakground.metrics.ranking import auroc
from weakground.metrics.retrieval import recall_at_k, retrieval_ranks, retrieval_report

__all__ = [
    "BoxRule",
    "CAPTION_METRICS",
    "PointingProtocol",
    "PresenceCalibration",
    "attention_correctness",
    "box_accuracy",
    "breakdown_by_type",
    "center_baseline",
    "center_baseline_point",
    "heatmap_point",
    "pointing_game",
    "pointing_hit",
    "random_baseline_accuracy",
    "recall_at_k",
    "retrieval_ranks",
    "retrieval_report",
    "auroc",
    "average_precision",
    "box_iou",
    "caption_scores",
    "class_average_precision",
    "grounding_f1",
    "fit_platt",
    "heatmap_to_boxes",
    "instance_boxes",
    "match_detections",
    "mean_ap",
    "peak_box",
    "resize_heatmap",
    "simple_tokenize",
]
