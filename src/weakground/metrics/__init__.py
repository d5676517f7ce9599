"""Metrics: pure functions on boxes, heatmaps and scores (no model knowledge).

Boxes are ``xyxy`` in pixel edges, 0-based, with exclusive ``x2``/``y2``: ``area = (x2 - x1) * (y2 - y1)``.
"""

from weakground.metrics.boxes import box_iou, heatmap_to_boxes, peak_box, resize_heatmap
from weakground.metrics.detection import average_precision, class_average_precision, match_detections, mean_ap
from weakground.metrics.ranking import auroc

__all__ = [
    "auroc",
    "average_precision",
    "box_iou",
    "class_average_precision",
    "heatmap_to_boxes",
    "match_detections",
    "mean_ap",
    "peak_box",
    "resize_heatmap",
]
