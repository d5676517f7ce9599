"""Box geometry and the heatmap -> boxes rule.

Box convention, everywhere in weakground: ``xyxy`` in pixel edges, 0-based, with ``x2``/``y2`` *exclusive*.
A box covering pixel columns 3..5 and rows 0..1 is ``[3, 0, 6, 2]``; its area is ``(x2 - x1) * (y2 - y1)``.
A box with ``x2 <= x1`` or ``y2 <= y1`` is degenerate: it has area 0 and IoU 0 with everything.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["box_iou", "resize_heatmap", "heatmap_to_boxes", "peak_box"]


def _check_boxes(boxes: Tensor, name: str) -> Tensor:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")
    return boxes if boxes.is_floating_point() else boxes.float()


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union of two sets of boxes.

    For boxes ``a_i`` and ``b_j`` (xyxy, exclusive ends)::

        inter = max(0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
        area  = max(0, x2 - x1) * max(0, y2 - y1)
        IoU   = inter / (area(a_i) + area(b_j) - inter)     if the union is > 0, else 0

    so degenerate (zero-area or inverted) boxes give 0, never NaN. Reference: the Jaccard index as used by
    PASCAL VOC (Everingham et al., IJCV 2010), which is also ``torchvision.ops.box_iou`` for valid boxes.

    Args:
        a: ``[N, 4]`` boxes.
        b: ``[M, 4]`` boxes.

    Returns:
        ``[N, M]`` floating tensor in [0, 1] (integer inputs are promoted to float32).
    """
    a = _check_boxes(a, "a")
    b = _check_boxes(b, "b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    w = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    h = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    valid = union > 0
    return torch.where(valid, inter / torch.where(valid, union, torch.ones_like(union)), torch.zeros_like(inter))


def resize_heatmap(heatmap: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize the last two (spatial) dimensions of a heatmap.

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (pixel-centre sampling,
    the same as ``cv2.resize``/PIL bilinear without antialiasing) on ``heatmap.reshape(-1, 1, h, w)``, then
    ``clamp(min=0)``: heatmaps are non-negative by convention and the output is guaranteed to stay so
    (negative input values are clipped to 0).

    Args:
        heatmap: ``[..., h, w]`` with at least 2 dimensions (e.g. ``[h, w]``, ``[K, h, w]``, ``[B, K, h, w]``).
        size: ``(H, W)``, the output spatial size.

    Returns:
        ``[..., H, W]``, same leading dimensions and device; floating dtype (integer input becomes float32).
    """
    if heatmap.ndim < 2:
        raise ValueError(f"heatmap must have at least 2 dimensions [..., h, w], got {tuple(heatmap.shape)}")
    if len(size) != 2 or any(int(s) != s or int(s) < 1 for s in size):
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    out_h, out_w = int(size[0]), int(size[1])
    x = heatmap if heatmap.is_floating_point() else heatmap.float()
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, 1, h, w)
    if flat.shape[0] == 0:
        return x.new_zeros(*lead, out_h, out_w)
    out = F.interpolate(flat, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return out.reshape(*lead, out_h, out_w).clamp(min=0)


def _components(heatmap: Tensor, threshold: float) -> tuple[np.ndarray, int, Tensor] | None:
    """Label the thresholded map; ``None`` when the map has no usable maximum (empty, <= 0 or non-finite)."""
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must have shape [H, W], got {tuple(heatmap.shape)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (a fraction of the map maximum), got {threshold}")
    if heatmap.numel() == 0:
        return None
    hm = heatmap.detach()
    if not hm.is_floating_point():
        hm = hm.float()
    peak = hm.max()  # NaN anywhere propagates to the max
    if not bool(torch.isfinite(peak)) or float(peak) <= 0:
        return None
    from scipy import ndimage

    mask = (hm >= threshold * peak).cpu().numpy()
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))  # 8-connectivity
    return labels, int(n), hm


def heatmap_to_boxes(
    heatmap: Tensor, threshold: float = 0.5, max_boxes: int | None = None, min_area: int = 1,
) -> tuple[Tensor, Tensor]:
    """Turn one heatmap into scored boxes: one box per connected high-value region.

    The rule:

    1. ``m = max(heatmap)``. If the map is empty, ``m <= 0`` or ``m`` is not finite (any NaN, or +inf),
       there is nothing to localise: return zero boxes.
    2. ``mask = heatmap >= threshold * m`` (the threshold is relative to the map's own maximum, so the
       rule is invariant to rescaling the map; a pixel exactly at the threshold is included).
    3. Each 8-connected component of ``mask`` (``scipy.ndimage.label`` with a 3x3 structuring element) is
       one candidate; components with fewer than ``min_area`` *pixels* are dropped.
    4. Its box is the component's tight extent in pixel edges, ``[x_min, y_min, x_max + 1, y_max + 1]``,
       and its score is the maximum heatmap value inside the component.
    5. Boxes are sorted by score, descending (stable: ties keep the raster order of each component's first
       pixel), and the first ``max_boxes`` are kept.

    This is the usual weakly-supervised localisation recipe (threshold the CAM at a fraction of its peak,
    box the connected regions; Zhou et al., "Learning Deep Features for Discriminative Localization",
    CVPR 2016), keeping every region rather than only the largest.

    Args:
        heatmap: ``[H, W]`` map, already at image resolution (see :func:`resize_heatmap`).
        threshold: fraction of the map maximum in [0, 1].
        max_boxes: keep at most this many boxes (highest scores); ``None`` keeps all.
        min_area: minimum component size in pixels.

    Returns:
        ``(boxes, scores)``: ``[K, 4]`` float32 xyxy boxes and ``[K]`` scores (the heatmap's floating dtype),
        both on the heatmap's device; ``K = 0`` gives shapes ``(0, 4)`` and ``(0,)``.
    """
    if max_boxes is not None and max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0 or None, got {max_boxes}")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    device = heatmap.device
    score_dtype = heatmap.dtype if heatmap.is_floating_point() else torch.float32
    empty = (torch.zeros(0, 4, dtype=torch.float32, device=device), torch.zeros(0, dtype=score_dtype, device=device))
    found = _components(heatmap, threshold)
    if found is None:
        return empty
    labels, n, hm = found
    if n == 0:
        return empty
    from scipy import ndimage

    slices = ndimage.find_objects(labels)  # label k -> (row slice, col slice), exclusive stops
    boxes = torch.tensor([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=torch.float32)
    flat_labels = torch.from_numpy(labels.reshape(-1).astype(np.int64)).to(hm.device)
    values = hm.reshape(-1)
    scores = torch.full((n + 1,), float("-inf"), dtype=values.dtype, device=hm.device)
    scores = scores.scatter_reduce(0, flat_labels, values, reduce="amax")[1:]
    areas = torch.bincount(flat_labels, minlength=n + 1)[1:]
    keep = areas >= min_area
    boxes, scores = boxes.to(device)[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices
    if max_boxes is not None:
        order = order[:max_boxes]
    return boxes[order], scores[order].to(score_dtype)


def peak_box(heatmap: Tensor, threshold: float = 0.5) -> tuple[Tensor, float]:
    """The single box around the heatmap's global peak (one box per query, for "average IoU").

    Same mask as :func:`heatmap_to_boxes` (``heatmap >= threshold * max``, 8-connectivity); the box is the tight
    extent of the component that contains the global argmax (first in raster order on ties). If the map has
    no usable maximum (``max <= 0`` or non-finite) the box is the zero-area box ``[0, 0, 0, 0]``, which has
    IoU 0 with everything.

    Args:
        heatmap: ``[H, W]`` map with at least one pixel.
        threshold: fraction of the map maximum in [0, 1].

    Returns:
        ``(box, peak)``: a ``[4]`` float32 xyxy box on the heatmap's device, and ``float(max(heatmap))``.
    """
    if heatmap.ndim == 2 and heatmap.numel() == 0:
        raise ValueError("peak_box needs a heatmap with at least one pixel")
    found = _components(heatmap, threshold)
    peak = float(heatmap.detach().max())
    if found is None:
        return torch.zeros(4, dtype=torch.float32, device=heatmap.device), peak
    labels, _, hm = found
    y, x = divmod(int(hm.argmax()), hm.shape[1])
    ys, xs = np.nonzero(labels == labels[y, x])  # the argmax is >= threshold * max, so it is labelled
    box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32, device=heatmap.device)
    return box, peak
