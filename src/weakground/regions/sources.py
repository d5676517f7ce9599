"""Region proposal sources: where the K regions of an image come from (REGION_SOURCES).

The grounded captioner (Hu et al., "Spatial-Semantic Attention for Grounded Image Captioning", ICIP 2022) reads
K regions per image from a detector (Bottom-Up Attention's Faster R-CNN there). No detector is trained here, so a
source is one of:

* ``"components"``: class-agnostic connected components of the pixels that differ from the background colour,
  padded with a coarse grid. Needs no ground truth; made for the synthetic scenes (vivid objects on a dull,
  cluttered background), where it recovers nearly every object (see :class:`ComponentSource`).
* ``"grid"``: the multi-scale grid alone, a baseline that looks at nothing.
* ``"oracle"``: the ground-truth boxes, padded with the grid. An upper bound, never a result: every report that
  uses it must say "oracle" (``needs_ground_truth`` is True so that callers can tell).

Every source returns at most ``max_regions`` boxes, best first, deduplicated, inside the image, with
``x2 > x1`` and ``y2 > y1`` (xyxy pixel edges, as in :mod:`weakground.metrics.boxes`), as float32 ``[k, 4]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from weakground.errors import ConfigError, InputError, WeakgroundError
from weakground.registry import REGION_SOURCES

__all__ = ["MIN_IMAGE_SIDE", "ComponentSource", "GridSource", "OracleSource", "RegionConfig", "RegionSource",
           "background_colour", "build_source", "check_image", "clip_boxes", "component_boxes", "deduplicate",
           "foreground_mask", "grid_boxes", "ground_truth_array", "iou_matrix"]

MIN_IMAGE_SIDE = 32  # EfficientNet-Lite0's stride: a smaller image has no c5/head cell
LEVEL_NAMES = ("c2", "c3", "c4", "c5", "head")


@dataclass(frozen=True)
class RegionConfig:
    """How regions are proposed and encoded.

    Attributes:
        source: a name in :data:`weakground.registry.REGION_SOURCES` (``components``, ``grid``, ``oracle``).
        max_regions: K, the regions per image (padding marked invalid when a source finds fewer).
        level: the EfficientNet-Lite0 level whose RoI-pooled map is a region's feature (``c4``: 112 channels at
            stride 16, ``c5``: 320 at stride 32, ``head``: 1280 at stride 32; ``c2``/``c3`` also work).
        image_size: S, the square side the caller resizes the encoder's images to (:func:`resize_square`;
            the encoder itself takes images as they come).
        output_size: RoIAlign bins per side (features are the mean over the bins).
        sampling_ratio: RoIAlign bilinear samples per bin side.
        colour_threshold: RGB distance (0..441 on 0..255 channels) from the background colour above which a
            pixel is foreground (``components``).
        merge_radii: dilation radii (px) at which nearby foreground pieces are joined into one component; each
            radius adds its components (striped objects fall apart at 0 and join at 2-4).
        min_area: smallest component, in foreground pixels.
        grid: cells per side of the padding grids (1: the whole image, 2: 2x2, ...).
        dedup_iou: a box whose IoU with a better one reaches this is a duplicate.
    """

    source: str = "components"
    max_regions: int = 16
    level: str = "c5"
    image_size: int = 224
    output_size: int = 7
    sampling_ratio: int = 2
    colour_threshold: float = 80.0
    merge_radii: tuple[int, ...] = (0, 2, 4)
    min_area: int = 9
    grid: tuple[int, ...] = (1, 2, 3, 4)
    dedup_iou: float = 0.9

    def __post_init__(self) -> None:
        # YAML/JSON lists become tuples, so configs compare and hash the same way.
        for name in ("merge_radii", "grid"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"regions.{name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the first field that is out of range or of the wrong type."""
        def is_int(v: Any, low: int) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low

        def is_number(v: Any, low: float, high: float) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and low <= v <= high

        checks = [
            ("source", isinstance(self.source, str), "a region source name"),
            ("max_regions", is_int(self.max_regions, 1), "an integer >= 1"),
            ("level", self.level in LEVEL_NAMES, f"one of {', '.join(LEVEL_NAMES)}"),
            ("image_size", is_int(self.image_size, MIN_IMAGE_SIDE), f"an integer >= {MIN_IMAGE_SIDE}"),
            ("output_size", is_int(self.output_size, 1), "an integer >= 1"),
            ("sampling_ratio", is_int(self.sampling_ratio, 1), "an integer >= 1"),
            ("colour_threshold", is_number(self.colour_threshold, 0.0, 442.0), "a number in [0, 442]"),
            ("merge_radii", len(self.merge_radii) > 0 and all(is_int(r, 0) for r in self.merge_radii),
             "a non-empty list of integers >= 0"),
            ("min_area", is_int(self.min_area, 1), "an integer >= 1"),
            ("grid", len(self.grid) > 0 and all(is_int(n, 1) for n in self.grid), "a non-empty list of integers >= 1"),
            ("dedup_iou", is_number(self.dedup_iou, 1e-9, 1.0), "a number in (0, 1]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"regions.{name} must be {expected}, got {getattr(self, name)!r}")


def check_image(image: Any) -> np.ndarray:
    """The image as uint8 ``[H, W, 3]``; InputError (one line) if it is not one or is under 32 px a side."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"a region image must be uint8 [H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
    if min(arr.shape[:2]) < MIN_IMAGE_SIDE:
        raise InputError(f"a region image must be at least {MIN_IMAGE_SIDE} px a side, got "
                         f"{arr.shape[1]}x{arr.shape[0]}")
    return arr


def ground_truth_array(ground_truth: Any) -> np.ndarray:
    """Ground-truth boxes as float32 ``[n, 4]`` xyxy: from ``[n, 4]`` arrays, lists of 4 numbers, or objects with
    ``as_list()`` (:class:`weakground.data.types.Box`)."""
    rows = [b.as_list() if hasattr(b, "as_list") else b for b in ground_truth]
    if not rows:
        return np.zeros((0, 4), np.float32)
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):  # ragged rows or non-numbers
        arr = np.zeros((0,))
    if arr.shape != (len(rows), 4):
        raise InputError(f"ground-truth boxes must be [n, 4] xyxy numbers, got {len(rows)} rows shaped "
                         f"{[np.shape(r) for r in rows[:3]]}")
    return arr


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[n, m]`` of xyxy boxes (the rule of :func:`weakground.metrics.boxes.box_iou`, in numpy)."""
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    inter = w * h
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the image, degenerate ones (``x2 <= x1`` or ``y2 <= y1`` after clipping) dropped."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep]


def deduplicate(boxes: np.ndarray, iou: float, limit: int | None = None) -> np.ndarray:
    """Greedy in order: keep a box unless its IoU with a kept one is ``>= iou``; stop after ``limit`` kept."""
    kept: list[int] = []
    overlaps = iou_matrix(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    for i in range(len(boxes)):
        if limit is not None and len(kept) >= limit:
            break
        if not kept or overlaps[i, kept].max() < iou:
            kept.append(i)
    return boxes[kept].reshape(-1, 4)


def grid_boxes(height: int, width: int, cells: Sequence[int]) -> np.ndarray:
    """The multi-scale grid, coarse first: for each ``n`` in ``cells`` the ``n x n`` cells in raster order,
    with edges rounded to whole pixels. ``[sum n^2, 4]`` float32."""
    out = []
    for n in cells:
        xs, ys = np.round(np.linspace(0, width, n + 1)), np.round(np.linspace(0, height, n + 1))
        out += [[xs[j], ys[i], xs[j + 1], ys[i + 1]] for i in range(n) for j in range(n)]
    return np.asarray(out, np.float32).reshape(-1, 4)


class RegionSource:
    """Base class of a region source: ``boxes(image, ground_truth)`` -> float32 ``[k, 4]``, ``k <= max_regions``.

    Subclasses set ``name`` and ``needs_ground_truth`` and implement :meth:`candidates`; the base class clips,
    deduplicates, truncates and pads with the grid, so every source's boxes are well formed the same way.
    """

    name: ClassVar[str] = ""
    needs_ground_truth: ClassVar[bool] = False

    def __init__(self, config: RegionConfig | None = None) -> None:
        self.config = config or RegionConfig(source=self.name)

    def candidates(self, image: np.ndarray, ground_truth: np.ndarray | None) -> np.ndarray:
        """The source's own boxes, best first (before clipping, dedup and padding): float32 ``[n, 4]``."""
        raise NotImplementedError

    def boxes(self, image: np.ndarray, ground_truth: Any = None) -> np.ndarray:
        """Proposals for one image.

        Args:
            image: uint8 ``[H, W, 3]``, both sides >= 32.
            ground_truth: ``[n, 4]`` xyxy boxes (or :class:`~weakground.data.types.Box` objects); required
                when ``needs_ground_truth``, ignored otherwise.

        Returns:
            float32 ``[k, 4]`` xyxy boxes in the image's pixels, best first, ``k <= max_regions`` (exactly
            ``max_regions`` unless even the grid runs out), inside the image, no two with IoU >= ``dedup_iou``.

        Raises:
            InputError: a malformed image, or missing ground truth for a source that needs it.
        """
        image = check_image(image)
        gt = None
        if self.needs_ground_truth:
            if ground_truth is None:
                raise InputError(f"region source {self.name!r} needs the ground-truth boxes")
            gt = ground_truth_array(ground_truth)
        h, w = image.shape[:2]
        cfg = self.config
        own = clip_boxes(self.candidates(image, gt), h, w)
        # The grid always goes in: duplicates among the source's own boxes may leave fewer than max_regions.
        padded = np.concatenate([own, grid_boxes(h, w, cfg.grid)])
        return deduplicate(padded, cfg.dedup_iou, cfg.max_regions).astype(np.float32)


@REGION_SOURCES.register("grid")
class GridSource(RegionSource):
    """The multi-scale grid only (whole image, 2x2, 3x3, 4x4 by default): a baseline that sees nothing."""

    name = "grid"

    def candidates(self, image: np.ndarray, ground_truth: np.ndarray | None) -> np.ndarray:
        return np.zeros((0, 4), np.float32)


@REGION_SOURCES.register("oracle")
class OracleSource(RegionSource):
    """The ground-truth boxes first (in the given order, each kept once), then grid padding.

    Boxes repeated across phrases are kept once, and like every source's, a box with IoU >= ``dedup_iou``
    with an earlier one is dropped; beyond ``max_regions`` ground-truth boxes the rest are cut.

    An upper bound for what better proposals could give, not a method: it reads the test annotations. Every
    report, table or log line built on it must say "oracle" (callers check ``needs_ground_truth``).
    """

    name = "oracle"
    needs_ground_truth = True

    def candidates(self, image: np.ndarray, ground_truth: np.ndarray | None) -> np.ndarray:
        assert ground_truth is not None
        # Phrases of one caption share boxes (the scene annotations repeat them): keep each box once.
        _, first = np.unique(ground_truth, axis=0, return_index=True)
        return ground_truth[np.sort(first)]


def background_colour(image: np.ndarray) -> np.ndarray:
    """The per-channel median of the image's outermost rows and columns, float32 ``[3]``: robust to objects
    and clutter that touch part of the border."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def foreground_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """``[H, W]`` bool: RGB distance from :func:`background_colour` above ``threshold`` (0..255 channels)."""
    diff = image.astype(np.float32) - background_colour(image)
    return np.einsum("hwc,hwc->hw", diff, diff) > np.float32(threshold) ** 2


def component_boxes(mask: np.ndarray, radius: int, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the foreground pieces that a dilation by ``radius`` px joins (8-connected).

    The dilation only decides which pieces belong together; each box is the tight extent of the *foreground*
    pixels of its group, so joining never inflates a box. Returns ``(boxes [n, 4] float32, areas [n])`` for
    groups of at least ``min_area`` foreground pixels.
    """
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    grown = ndimage.binary_dilation(mask, structure=eight, iterations=radius) if radius else mask
    labels, n = ndimage.label(grown, structure=eight)
    labels = np.where(mask, labels, 0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    rows = [[s[1].start, s[0].start, s[1].stop, s[0].stop] if s is not None else [0, 0, 0, 0]
            for s in ndimage.find_objects(labels, max_label=n)]
    boxes = np.asarray(rows, np.float32).reshape(-1, 4)
    keep = areas >= min_area
    return boxes[keep], areas[keep]


@REGION_SOURCES.register("components")
class ComponentSource(RegionSource):
    """Class-agnostic proposals from colour: connected foreground components, largest first, then the grid.

    1. The background colour is the median of the border pixels (:func:`background_colour`); foreground is
       every pixel farther than ``colour_threshold`` from it in RGB. The scenes' backgrounds are dull
       (saturation <= 0.35, value 0.22-0.45) under clutter of +-0.12 per channel, their objects vivid, so one
       global colour separates them although the background is not flat.
    2. For each radius in ``merge_radii``, pieces that a dilation by that radius joins form one component
       (stripes and dots darken a textured object into bands; radius 2-4 rejoins them); its box is the tight
       extent of its foreground pixels. Components smaller than ``min_area`` pixels are noise.
    3. All components, sorted by foreground area (largest first), are deduplicated, so a component that no
       radius changes appears once; the grid fills the remaining slots.

    Objects closer than twice a radius merge at that radius, but the smaller radii still list them apart.
    """

    name = "components"

    def candidates(self, image: np.ndarray, ground_truth: np.ndarray | None) -> np.ndarray:
        cfg = self.config
        mask = foreground_mask(image, cfg.colour_threshold)
        found = [component_boxes(mask, r, cfg.min_area) for r in cfg.merge_radii]
        boxes = np.concatenate([b for b, _ in found])
        areas = np.concatenate([a for _, a in found])
        return boxes[np.argsort(-areas, kind="stable")]


def build_source(config: RegionConfig) -> RegionSource:
    """The source ``config.source`` names, built with ``config``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    try:
        factory = REGION_SOURCES.get(config.source)
    except WeakgroundError as exc:
        raise ConfigError(f"regions.source: {exc}") from None
    return factory(config)

