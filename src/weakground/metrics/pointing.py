"""The pointing game, attention correctness, their baselines and per-type breakdowns.

Every choice that differs between papers is a field of :class:`PointingProtocol`; print
``protocol.describe()`` next to every pointing number, together with :func:`center_baseline` and
:func:`random_baseline_accuracy` under the same protocol.

Geometry (shared by every function here, so the game and its baselines agree exactly):

* Boxes are ``xyxy`` pixel edges, 0-based, ``x2``/``y2`` exclusive. A box with ``x2 <= x1`` or ``y2 <= y1``
  is degenerate and covers nothing: it is ignored (it can never be hit, not even with a tolerance).
* Points are continuous ``(x, y)`` image coordinates; pixel ``(i, j)`` (row ``i``, column ``j``) has its
  centre at ``(j + 0.5, i + 0.5)``.
* A point is *in* a box iff ``x1 <= x < x2`` and ``y1 <= y < y2`` (half-open, like the pixels the box
  covers: pixel ``(i, j)`` belongs to the box iff its centre is in the box).
* With ``tolerance t > 0`` a point also hits a box iff its Euclidean distance to the box rectangle is
  ``<= t``: ``dx = max(x1 - x, 0, x - x2)``, ``dy = max(y1 - y, 0, y - y2)``, hit iff ``dx^2 + dy^2 <= t^2``.
  The hit region is the box dilated by a disk of radius ``t`` (rounded corners), as in the 15 px pointing
  game of Zhang et al. (TorchRay's reference implementation also accepts a disk around the point).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from weakground.metrics.boxes import box_iou, resize_heatmap

__all__ = [
    "PointingProtocol",
    "heatmap_point",
    "pointing_hit",
    "pointing_game",
    "attention_correctness",
    "center_baseline_point",
    "center_baseline",
    "random_baseline_accuracy",
    "box_accuracy",
    "breakdown_by_type",
]

_BOX_RULES = ("any", "union")
_ARGMAX_ON = ("image", "grid")


@dataclass(frozen=True)
class PointingProtocol:
    """The settings of one pointing-game protocol (Zhang et al., "Top-down Neural Attention by Excitation
    Backprop", ECCV 2016 / IJCV 2018, and the phrase-grounding variants that followed).

    Attributes:
        tolerance: pixels, ``>= 0``. A point hits a box if it lies inside it or within this Euclidean distance
            of it. Phrase-grounding papers use 0; Zhang et al. use 15.
        box_rule: ``"any"``: a hit if the point hits any ground-truth box of the phrase; ``"union"``: a hit if
            it hits the union box, the smallest box covering all the phrase's (non-degenerate) boxes.
        min_area: in ``[0, 1]``. A query whose union box (clipped to the image) covers less than this fraction
            of the image is skipped, i.e. excluded from the accuracy (0.05 is common; 0 skips nothing).
        argmax_on: ``"image"``: the point is the argmax of the heatmap bilinearly resized to the image size;
            ``"grid"``: the argmax on the heatmap's own grid, mapped to that cell's centre in image pixels.
    """

    tolerance: float = 0.0
    box_rule: str = "any"
    min_area: float = 0.0
    argmax_on: str = "image"

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real):
            raise ValueError(f"tolerance must be a number of pixels, got {self.tolerance!r}")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"tolerance must be finite and >= 0, got {self.tolerance}")
        if self.box_rule not in _BOX_RULES:
            raise ValueError(f"box_rule must be one of {_BOX_RULES}, got {self.box_rule!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, numbers.Real):
            raise ValueError(f"min_area must be a fraction of the image area, got {self.min_area!r}")
        if not 0.0 <= self.min_area <= 1.0:
            raise ValueError(f"min_area must lie in [0, 1], got {self.min_area}")
        if self.argmax_on not in _ARGMAX_ON:
            raise ValueError(f"argmax_on must be one of {_ARGMAX_ON}, got {self.argmax_on!r}")

    def describe(self) -> dict:
        """The protocol as a plain dict (for reports and JSON), with the hit geometry spelled out."""
        out = asdict(self)
        out["tolerance_metric"] = "euclidean distance to the box, <= tolerance"
        out["point_in_box"] = "x1 <= x < x2 and y1 <= y < y2 (pixel centres at +0.5)"
        return out


# --------------------------------------------------------------------------------------------- helpers


def _image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) != s or int(s) < 1 for s in image_size):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _valid_boxes(gt_boxes: Tensor | np.ndarray) -> np.ndarray:
    """``[G, 4]`` float64 numpy boxes with the degenerate ones dropped."""
    b = gt_boxes.detach().cpu().double().numpy() if isinstance(gt_boxes, Tensor) else np.asarray(gt_boxes, float)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape [G, 4] (xyxy), got {tuple(b.shape)}")
    if np.isnan(b).any():
        raise ValueError("gt_boxes contain NaN")
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]


def _hit_boxes(boxes: np.ndarray, box_rule: str) -> np.ndarray:
    """The boxes a point must hit (one of): the valid boxes themselves, or their union box."""
    if box_rule == "union" and boxes.shape[0] > 0:
        return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])[None]
    return boxes


def _hit_grid(xs: np.ndarray, ys: np.ndarray, boxes: np.ndarray, tolerance: float) -> np.ndarray:
    """``[len(ys), len(xs)]`` bool: does the point ``(xs[j], ys[i])`` hit any of ``boxes``? (module rule)."""
    out = np.zeros((ys.shape[0], xs.shape[0]), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        inside = ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
        if tolerance > 0:
            dx = np.maximum(np.maximum(x1 - xs, xs - x2), 0.0)
            dy = np.maximum(np.maximum(y1 - ys, ys - y2), 0.0)
            inside |= dy[:, None] ** 2 + dx[None, :] ** 2 <= tolerance**2
        out |= inside
    return out


def _union_area_fraction(boxes: np.ndarray, size: tuple[int, int]) -> float:
    """Area of the union box clipped to the image, over the image area (0 with no valid box)."""
    if boxes.shape[0] == 0:
        return 0.0
    h, w = size
    x1, y1 = max(boxes[:, 0].min(), 0.0), max(boxes[:, 1].min(), 0.0)
    x2, y2 = min(boxes[:, 2].max(), float(w)), min(boxes[:, 3].max(), float(h))
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0) / (h * w)


def _skip(boxes: np.ndarray, size: tuple[int, int], protocol: PointingProtocol) -> bool:
    """A query is skipped when it has no valid box, or its union box is below ``min_area`` of the image."""
    return boxes.shape[0] == 0 or _union_area_fraction(boxes, size) < protocol.min_area


def _check_lists(n: int, **named: Sequence) -> None:
    for name, seq in named.items():
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, expected {n}")


def _as_map(heatmap: Tensor) -> Tensor:
    if heatmap.ndim != 2 or heatmap.numel() == 0:
        raise ValueError(f"heatmap must have shape [h, w] with at least one cell, got {tuple(heatmap.shape)}")
    hm = heatmap.detach().cpu().double()
    if bool(torch.isnan(hm).any()):
        raise ValueError("heatmap contains NaN")
    return hm


# ------------------------------------------------------------------------------------------ the game


def heatmap_point(heatmap: Tensor, image_size: tuple[int, int], argmax_on: str = "image") -> tuple[float, float]:
    """The point a heatmap "points at", in image pixels.

    * ``argmax_on="image"``: resize the map bilinearly to ``(H, W)`` (:func:`resize_heatmap`,
      ``align_corners=False``) and take the argmax pixel ``(i, j)``; the point is its centre
      ``(j + 0.5, i + 0.5)``. The map is shifted by its minimum before resizing (bilinear weights sum to 1,
      so this does not move the argmax) so that negative maps, e.g. raw logits, keep their argmax despite
      ``resize_heatmap``'s clipping at 0.
    * ``argmax_on="grid"``: argmax cell ``(i, j)`` of the ``[h, w]`` map itself, mapped to the cell centre
      ``((j + 0.5) * W / w, (i + 0.5) * H / h)``.

    Ties go to the first maximum in row-major order, so a constant map points at the top-left pixel
    (``(0.5, 0.5)`` for ``"image"``) or cell. NaN is never allowed; ``+/-inf`` only with ``"grid"``.

    Args:
        heatmap: ``[h, w]`` map (any device, any real dtype).
        image_size: ``(H, W)`` of the original image.
        argmax_on: ``"image"`` or ``"grid"``.

    Returns:
        ``(x, y)`` in image pixels.
    """
    size = _image_size(image_size)
    if argmax_on not in _ARGMAX_ON:
        raise ValueError(f"argmax_on must be one of {_ARGMAX_ON}, got {argmax_on!r}")
    hm = _as_map(heatmap)
    h, w = hm.shape
    if argmax_on == "grid":
        i, j = divmod(int(np.argmax(hm.numpy())), w)  # np.argmax: first maximum in row-major order
        return (j + 0.5) * size[1] / w, (i + 0.5) * size[0] / h
    if not bool(torch.isfinite(hm).all()):
        raise ValueError("heatmap contains inf: bilinear resizing is undefined (use argmax_on='grid')")
    resized = resize_heatmap(hm - hm.min(), size)
    i, j = divmod(int(np.argmax(resized.numpy())), size[1])
    return j + 0.5, i + 0.5


def pointing_hit(point: tuple[float, float], gt_boxes: Tensor, protocol: PointingProtocol | None = None) -> bool:
    """Does ``point`` hit the phrase's ground truth under ``protocol``?

    With ``box_rule="any"`` the point must hit one of ``gt_boxes``; with ``"union"`` it must hit their union
    box ``[min x1, min y1, max x2, max y2]``. "Hit" is the module rule: inside (half-open) or, for
    ``tolerance > 0``, within Euclidean distance ``tolerance`` of the box. Degenerate boxes are ignored; no
    valid box means no hit. ``protocol.min_area`` and ``argmax_on`` play no part here (see
    :func:`pointing_game`).

    Args:
        point: ``(x, y)`` in image pixels.
        gt_boxes: ``[G, 4]`` xyxy boxes of the phrase.
        protocol: defaults to ``PointingProtocol()`` (tolerance 0, any box).

    Returns:
        True for a hit.
    """
    protocol = protocol or PointingProtocol()
    boxes = _hit_boxes(_valid_boxes(gt_boxes), protocol.box_rule)
    x, y = float(point[0]), float(point[1])
    return bool(_hit_grid(np.array([x]), np.array([y]), boxes, protocol.tolerance)[0, 0])


def pointing_game(
    heatmaps: Sequence[Tensor],
    boxes: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    protocol: PointingProtocol | None = None,
) -> dict:
    """Pointing-game accuracy over queries (one heatmap per phrase/class query).

    For query ``q``: ``p_q = heatmap_point(heatmap_q, size_q, protocol.argmax_on)`` and
    ``hit_q = pointing_hit(p_q, boxes_q, protocol)``. A query is *skipped* (``hit_q = None``) when it has no
    non-degenerate box, or when ``area(union box clipped to the image) / (H W) < protocol.min_area``.
    Then::

        accuracy = (number of hits) / (number of non-skipped queries)        (nan if all are skipped)

    This is the per-query accuracy (phrase grounding); for Zhang et al.'s per-class mean, use
    :func:`breakdown_by_type` on ``hits`` with the class as the type and average the means.

    Args:
        heatmaps: ``Q`` maps ``[h, w]``.
        boxes: ``Q`` ground-truth box sets ``[G_q, 4]``.
        image_sizes: ``Q`` original image sizes ``(H, W)``.
        protocol: defaults to ``PointingProtocol()``.

    Returns:
        ``{"accuracy": float, "hits": list[bool | None], "n_queries": Q (all queries), "n_skipped": int,
        "n_evaluated": Q - n_skipped, "n_hits": int, "protocol": protocol.describe()}``.
    """
    protocol = protocol or PointingProtocol()
    _check_lists(len(heatmaps), boxes=boxes, image_sizes=image_sizes)
    hits: list[bool | None] = []
    for heatmap, gt, size in zip(heatmaps, boxes, image_sizes):
        size = _image_size(size)
        valid = _valid_boxes(gt)
        if _skip(valid, size, protocol):
            hits.append(None)
            continue
        point = heatmap_point(heatmap, size, protocol.argmax_on)
        hits.append(pointing_hit(point, valid, protocol))
    return _summary(hits, protocol)


def _summary(hits: list[bool | None], protocol: PointingProtocol) -> dict:
    scored = [h for h in hits if h is not None]
    n_hits = sum(scored)
    return {
        "accuracy": n_hits / len(scored) if scored else float("nan"),
        "hits": hits,
        "n_queries": len(hits),
        "n_skipped": len(hits) - len(scored),
        "n_evaluated": len(scored),
        "n_hits": int(n_hits),
        "protocol": protocol.describe(),
    }


# ------------------------------------------------------------------------------------------ baselines


def center_baseline_point(image_size: tuple[int, int]) -> tuple[float, float]:
    """The image centre ``(W / 2, H / 2)`` (a pixel corner when ``W`` or ``H`` is even).

    Args:
        image_size: ``(H, W)``.

    Returns:
        ``(x, y)`` in image pixels.
    """
    h, w = _image_size(image_size)
    return w / 2.0, h / 2.0


def center_baseline(
    boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]], protocol: PointingProtocol | None = None,
) -> float:
    """Pointing accuracy of always pointing at :func:`center_baseline_point` (Zhang et al.'s "Center" baseline).

    Same queries, skipping and hit rule as :func:`pointing_game` under ``protocol`` (``argmax_on`` is unused).

    Args:
        boxes: ``Q`` ground-truth box sets ``[G_q, 4]``.
        image_sizes: ``Q`` image sizes ``(H, W)``.
        protocol: defaults to ``PointingProtocol()``.

    Returns:
        Accuracy in [0, 1] over the non-skipped queries; ``nan`` if all are skipped.
    """
    protocol = protocol or PointingProtocol()
    _check_lists(len(boxes), image_sizes=image_sizes)
    hits: list[bool | None] = []
    for gt, size in zip(boxes, image_sizes):
        size = _image_size(size)
        valid = _valid_boxes(gt)
        hits.append(None if _skip(valid, size, protocol) else pointing_hit(center_baseline_point(size), valid,
                                                                            protocol))
    return _summary(hits, protocol)["accuracy"]


def random_baseline_accuracy(
    boxes: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    protocol: PointingProtocol | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> float:
    """Expected pointing accuracy of a point drawn uniformly at random among the image's pixel centres.

    Exact by default: for each non-skipped query (same skipping as :func:`pointing_game`)::

        p_q = #{pixels (i, j) of the H x W image whose centre (j + .5, i + .5) is a hit} / (H W)

    counted on the whole pixel grid with the exact hit rule of :func:`pointing_hit` (so the hit region is the
    union of the boxes, or the union box, dilated by the tolerance disk, clipped to the image), and the
    result is ``mean_q p_q``. For tolerance 0 and integer boxes, ``p_q`` is the union of the boxes' pixel areas
    inside the image over ``H W``. The random point lives on the image grid whatever ``argmax_on`` is.

    Args:
        boxes: ``Q`` ground-truth box sets ``[G_q, 4]``.
        image_sizes: ``Q`` image sizes ``(H, W)``.
        protocol: defaults to ``PointingProtocol()``.
        n_samples: ``None`` (default) for the exact value; an integer ``> 0`` instead draws that many random
            pixels per query (a Monte Carlo estimate, for cross-checking the exact value).
        seed: seed of the ``numpy`` generator used when ``n_samples`` is given.

    Returns:
        Expected accuracy in [0, 1]; ``nan`` if all queries are skipped.
    """
    protocol = protocol or PointingProtocol()
    _check_lists(len(boxes), image_sizes=image_sizes)
    if n_samples is not None and (int(n_samples) != n_samples or n_samples < 1):
        raise ValueError(f"n_samples must be None or a positive integer, got {n_samples!r}")
    rng = np.random.default_rng(seed)
    rates = []
    for gt, size in zip(boxes, image_sizes):
        h, w = _image_size(size)
        valid = _valid_boxes(gt)
        if _skip(valid, (h, w), protocol):
            continue
        hit_boxes = _hit_boxes(valid, protocol.box_rule)
        if n_samples is not None:
            cols = rng.integers(0, w, int(n_samples)) + 0.5
            rows = rng.integers(0, h, int(n_samples)) + 0.5
            hits = [_hit_grid(np.array([x]), np.array([y]), hit_boxes, protocol.tolerance)[0, 0]
                    for x, y in zip(cols, rows)]
            rates.append(float(np.mean(hits)))
            continue
        # Only pixels within the tolerance of the boxes' bounding extent can hit: count on that sub-grid.
        t = protocol.tolerance
        lo_x, hi_x = hit_boxes[:, 0].min() - t, hit_boxes[:, 2].max() + t
        lo_y, hi_y = hit_boxes[:, 1].min() - t, hit_boxes[:, 3].max() + t
        xs = np.arange(w) + 0.5
        ys = np.arange(h) + 0.5
        xs, ys = xs[(xs >= lo_x) & (xs <= hi_x)], ys[(ys >= lo_y) & (ys <= hi_y)]
        rates.append(int(_hit_grid(xs, ys, hit_boxes, t).sum()) / (h * w))
    return float(np.mean(rates)) if rates else float("nan")


# --------------------------------------------------------------------------------- attention, boxes


def attention_correctness(heatmap: Tensor, gt_boxes: Tensor, image_size: tuple[int, int]) -> float:
    """Share of the heatmap's mass inside the ground-truth region (Liu et al., "Attention Correctness in Neural
    Image Captioning", AAAI 2017).

    ``A = resize_heatmap(heatmap, (H, W))`` (bilinear, negatives clipped to 0), normalised to ``a = A / sum(A)``;
    ``M`` is the union of the boxes' pixel masks (pixel ``(i, j)`` is in a box iff its centre is, see the
    module rule; degenerate boxes cover nothing)::

        AC = sum_{(i, j) in M} a_ij

    If ``A`` is all zero the mass is taken as uniform, ``a_ij = 1 / (H W)``, so ``AC = |M| / (H W)``, the
    region's share of the image (what an uninformative map earns). No valid box gives 0.

    Args:
        heatmap: ``[h, w]`` map (NaN not allowed; ``+inf`` is not supported either).
        gt_boxes: ``[G, 4]`` xyxy boxes of the phrase.
        image_size: ``(H, W)`` of the original image.

    Returns:
        AC in [0, 1].
    """
    h, w = _image_size(image_size)
    hm = _as_map(heatmap)
    if bool(torch.isinf(hm).any()):
        raise ValueError("heatmap contains inf")
    mass = resize_heatmap(hm, (h, w)).numpy()
    total = mass.sum()
    if total <= 0:
        mass, total = np.ones((h, w)), float(h * w)
    region = _hit_grid(np.arange(w) + 0.5, np.arange(h) + 0.5, _valid_boxes(gt_boxes), 0.0)
    return float(min(1.0, mass[region].sum() / total))


def box_accuracy(pred_boxes: Sequence[Tensor], gt_boxes: Sequence[Tensor], iou_threshold: float = 0.5) -> float:
    """Fraction of queries whose predicted box has ``IoU >= iou_threshold`` with at least one ground-truth box.

    ``correct_q = max_g IoU(pred_q, gt_{q,g}) >= iou_threshold`` (:func:`box_iou`; a query with no
    ground-truth box is incorrect). The usual "accuracy at IoU 0.5" of phrase grounding (e.g. Plummer et al.,
    Flickr30k Entities, ICCV 2015; Rohrbach et al., ECCV 2016), here for one box per query, e.g. from
    :func:`peak_box`.

    Args:
        pred_boxes: ``Q`` boxes ``[4]`` (xyxy).
        gt_boxes: ``Q`` box sets ``[G_q, 4]``.
        iou_threshold: in (0, 1].

    Returns:
        Accuracy in [0, 1]; ``nan`` for zero queries.
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    _check_lists(len(pred_boxes), gt_boxes=gt_boxes)
    if not pred_boxes:
        return float("nan")
    correct = 0
    for pred, gt in zip(pred_boxes, gt_boxes):
        pred = torch.as_tensor(pred).detach().cpu().double().reshape(-1)
        gt = torch.as_tensor(gt).detach().cpu().double()
        if pred.numel() != 4:
            raise ValueError(f"each predicted box must have 4 values (xyxy), got {pred.numel()}")
        gt = gt.reshape(-1, 4) if gt.numel() else gt.new_zeros(0, 4)
        if gt.shape[0] and float(box_iou(pred[None], gt).max()) >= iou_threshold:
            correct += 1
    return correct / len(pred_boxes)


def breakdown_by_type(values: Sequence[float | bool | None], types: Sequence[Sequence[str]]) -> dict[str, dict]:
    """Mean of a per-query value per phrase type (e.g. Flickr30k Entities' people / clothing / ...).

    A query with several types counts once in each of them (duplicates in its list count once); ``None``
    values (e.g. skipped queries in ``pointing_game(...)["hits"]``) are ignored. Bools count as 0/1.

    Args:
        values: ``Q`` per-query values (hit flags, IoUs, attention correctness, ...).
        types: ``Q`` lists of type names.

    Returns:
        ``{type: {"mean": float, "count": int}}`` sorted by type name; a type seen only with ``None`` values
        has ``count`` 0 and ``mean`` nan.
    """
    _check_lists(len(values), types=types)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for value, query_types in zip(values, types):
        if isinstance(query_types, str):
            raise ValueError("each entry of types must be a list of type names, not a string")
        for t in dict.fromkeys(query_types):
            sums.setdefault(t, 0.0)
            counts.setdefault(t, 0)
            if value is not None:
                sums[t] += float(value)
                counts[t] += 1
    return {t: {"mean": sums[t] / counts[t] if counts[t] else float("nan"), "count": counts[t]}
            for t in sorted(sums)}
