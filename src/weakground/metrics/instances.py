"""Instance boxes: one box per object from a heatmap, by growing a region from each peak.

The fixed-threshold rule (:func:`~weakground.metrics.boxes.heatmap_to_boxes`) cuts every map at one fraction of
its global maximum, so an object whose map is uneven (a face hotter than the body, a bus with three bright
windows) falls apart into fragments, and a second object with a weaker peak is cut away. Here each peak gets
its own level:

1. Seeds: the 8-connected components of ``heatmap >= min_peak x max``; each seed is its component's maximum
   (value ``v``, first in raster order on ties). Seeds are visited from the highest ``v`` down.
2. Growing: a seed's region is the 8-connected component of ``heatmap >= grow x v`` that contains it, so the
   region reaches as far as the map stays above a fraction of *that* peak, however bright the others are.
3. One box per object: a seed that lies inside an already kept region, or whose region swallows a kept seed,
   is the same object seen from a lower peak (the two are joined above its level) and is dropped; so is a box
   whose IoU with a kept one is ``>= nms_iou`` (non-maximum suppression).
4. A box is the region's tight extent in pixel edges (exclusive ends, as everywhere in weakground) and its score
   is ``v``; boxes are returned best first.

Region growing from local maxima is the classic seeded segmentation of a relief map (e.g. Adams and Bischof,
"Seeded region growing", PAMI 1994); ``grow`` and ``min_peak`` are chosen on validation images
(``benchmarks/instance_boxes.py``), never on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from weakground.metrics.boxes import box_iou

__all__ = ["BoxRule", "instance_boxes"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


def _check(heatmap: Tensor, grow: float, min_peak: float, nms_iou: float, max_boxes: int | None) -> None:
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must have shape [H, W], got {tuple(heatmap.shape)}")
    for name, value in (("grow", grow), ("min_peak", min_peak), ("nms_iou", nms_iou)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if max_boxes is not None and max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0 or None, got {max_boxes}")


def _seeds(hm: np.ndarray, min_peak: float, max_seeds: int) -> list[tuple[float, int, int]]:
    """``(value, y, x)`` of each component's maximum at ``min_peak x max``, highest first."""
    from scipy import ndimage

    labels, n = ndimage.label(hm >= min_peak * hm.max(), structure=_EIGHT)
    if n == 0:
        return []
    positions = ndimage.maximum_position(hm, labels, index=np.arange(1, n + 1))
    seeds = [(float(hm[y, x]), int(y), int(x)) for y, x in positions]
    seeds.sort(key=lambda s: -s[0])  # stable: equal peaks keep the components' raster order
    return seeds[:max_seeds]


def instance_boxes(heatmap: Tensor, grow: float = 0.3, min_peak: float = 0.5, nms_iou: float = 0.5,
                   max_boxes: int | None = None, max_seeds: int = 32) -> tuple[Tensor, Tensor]:
    """One box per object of ``heatmap`` (see the module docstring for the rule).

    Args:
        heatmap: ``[H, W]`` map at image resolution.
        grow: a region keeps the pixels connected to its seed that are ``>= grow x`` the seed's value.
        min_peak: seeds are components at ``min_peak x`` the map's maximum (1.0: the global peak only).
        nms_iou: a box overlapping a better one by this IoU or more is dropped.
        max_boxes: keep at most this many (``None``: all).
        max_seeds: most seeds grown (the highest), bounding the work on a noisy map.

    Returns:
        ``(boxes, scores)``: ``[K, 4]`` float32 xyxy boxes and ``[K]`` float32 peak values, best first, on the
        heatmap's device; ``K = 0`` for an empty map, a maximum ``<= 0`` or a non-finite value.
    """
    from scipy import ndimage

    _check(heatmap, grow, min_peak, nms_iou, max_boxes)
    device = heatmap.device
    empty = torch.zeros(0, 4, dtype=torch.float32, device=device), torch.zeros(0, dtype=torch.float32, device=device)
    hm = heatmap.detach().float().cpu().numpy()
    if hm.size == 0 or not np.isfinite(hm).all() or hm.max() <= 0 or max_boxes == 0:
        return empty
    kept: list[tuple[float, np.ndarray, Tensor, tuple[int, int]]] = []  # (score, region, box, seed)
    for value, y, x in _seeds(hm, min_peak, max_seeds):
        if any(region[y, x] for _, region, _, _ in kept):
            continue
        labels, _ = ndimage.label(hm >= grow * value, structure=_EIGHT)
        region = labels == labels[y, x]
        if any(region[sy, sx] for _, _, _, (sy, sx) in kept):
            continue
        ys, xs = np.nonzero(region)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        if kept and float(box_iou(box, torch.cat([k[2] for k in kept])).max()) >= nms_iou:
            continue
        kept.append((value, region, box, (y, x)))
        if max_boxes is not None and len(kept) == max_boxes:
            break
    if not kept:
        return empty
    boxes = torch.cat([k[2] for k in kept]).to(device)
    return boxes, torch.tensor([k[0] for k in kept], dtype=torch.float32, device=device)


@dataclass(frozen=True)
class BoxRule:
    """How one phrase's map becomes its one answer box, for box accuracy: the top-scoring box of a rule.

    Attributes:
        kind: ``"threshold"`` (:func:`~weakground.metrics.boxes.heatmap_to_boxes` at ``threshold`` x the map's
            maximum: what ``locate`` draws) or ``"instance"`` (:func:`instance_boxes`).
        threshold: the ``threshold`` rule's fraction of the maximum.
        grow, min_peak: the ``instance`` rule's settings.
    """

    kind: str = "instance"
    threshold: float = 0.5
    grow: float = 0.3
    min_peak: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("threshold", "instance"):
            raise ValueError(f"box rule kind must be 'threshold' or 'instance', got {self.kind!r}")

    @property
    def name(self) -> str:
        if self.kind == "threshold":
            return f"threshold@{self.threshold:g}"
        return f"instance(grow={self.grow:g},min_peak={self.min_peak:g})"

    def boxes(self, heatmap: Tensor) -> tuple[Tensor, Tensor]:
        """Every box of the rule on an image-resolution map, best first."""
        from weakground.metrics.boxes import heatmap_to_boxes

        if self.kind == "threshold":
            return heatmap_to_boxes(heatmap, self.threshold)
        return instance_boxes(heatmap, self.grow, self.min_peak)

    def top_box(self, heatmap: Tensor) -> Tensor:
        """The best box ``[4]``; the zero-area box (IoU 0 with everything) when the map gives none."""
        boxes, _ = self.boxes(heatmap)
        return boxes[0] if len(boxes) else torch.zeros(4, dtype=torch.float32, device=heatmap.device)
