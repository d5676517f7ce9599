"""Records shared by every dataset reader: an image with its captions, each caption with its grounded phrases.

Every source (Flickr30K Entities, COCO, ReferIt, Visual Genome, the synthetic scenes) is read into the same
:class:`ImageRecord` shape, so batching, training and evaluation never know which file format fed them.

Box convention, the same as :mod:`weakground.metrics.boxes`: ``xyxy`` pixel edges, 0-based, ``x2``/``y2``
*exclusive*. A box over pixel columns 3..5 has ``x1=3, x2=6``; its area is ``(x2 - x1) * (y2 - y1)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Box", "Phrase", "Caption", "ImageRecord", "Problem", "ReadResult"]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel edges: 0-based, ``x2``/``y2`` exclusive.

    Attributes:
        x1: left edge (first covered column).
        y1: top edge (first covered row).
        x2: right edge, one past the last covered column.
        y2: bottom edge, one past the last covered row.
    """

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        """``x2 - x1`` (negative for a degenerate box)."""
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        """``y2 - y1`` (negative for a degenerate box)."""
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        """Covered area; 0 for a degenerate box (``x2 <= x1`` or ``y2 <= y1``)."""
        return max(0.0, self.width) * max(0.0, self.height)

    def as_list(self) -> list[float]:
        """``[x1, y1, x2, y2]``, the layout :func:`weakground.metrics.boxes.box_iou` takes."""
        return [self.x1, self.y1, self.x2, self.y2]

    def as_xywh(self) -> list[float]:
        """``[x, y, w, h]`` as COCO and Visual Genome store it."""
        return [self.x1, self.y1, self.width, self.height]

    def clip(self, width: float, height: float) -> Box:
        """The part of the box inside a ``width`` x ``height`` image (may be degenerate if none is)."""
        w, h = float(width), float(height)
        return Box(min(max(self.x1, 0.0), w), min(max(self.y1, 0.0), h),
                   min(max(self.x2, 0.0), w), min(max(self.y2, 0.0), h))

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> Box:
        """From COCO / Visual Genome ``[x, y, w, h]``: 0-based top-left corner plus size."""
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h))

    @classmethod
    def from_voc_1based(cls, xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
        """From Flickr30K Entities / PASCAL VOC ``<bndbox>``: 1-based pixel indices, both ends inclusive.

        Pixel ``xmin`` (1-based) is column ``xmin - 1`` (0-based), and an inclusive last column ``xmax`` (1-based)
        is column ``xmax - 1``, whose exclusive right edge is ``xmax``. So ``x1 = xmin - 1``, ``x2 = xmax``:
        ``<xmin>1</xmin><xmax>333</xmax>`` on a 333-pixel-wide image is the full width ``[0, 333)``.
        """
        return cls(float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax))

    def to_voc_1based(self) -> tuple[int, int, int, int]:
        """Inverse of :meth:`from_voc_1based`, rounded to whole pixels (VOC stores integers)."""
        return (round(self.x1) + 1, round(self.y1) + 1, round(self.x2), round(self.y2))


@dataclass
class Phrase:
    """A piece of text grounded to zero or more boxes.

    Attributes:
        text: the phrase's words, e.g. ``"a red shirt"``.
        boxes: every ground-truth box of the phrase (an entity may have several: "two dogs").
        phrase_types: coarse types from the source (Flickr30K Entities ``["people", "other"]``, a COCO category
            name); empty when the source has none.
        entity_id: the source's id for the thing referred to (Flickr30K entity id, COCO category id, ReferIt
            annotation id, Visual Genome region id), so mentions of one entity across captions can be linked.
        first_word_index: index of the phrase's first word in ``caption.text.split()``; ``None`` when the phrase
            is not a span of a caption (COCO category objects).
    """

    text: str
    boxes: list[Box] = field(default_factory=list)
    phrase_types: list[str] = field(default_factory=list)
    entity_id: str | None = None
    first_word_index: int | None = None


@dataclass
class Caption:
    """One caption (or referring expression, or region description) with the phrases grounded in it.

    Attributes:
        text: plain text, markup removed.
        phrases: the grounded phrases; empty for captions without phrase annotation (COCO captions).
    """

    text: str
    phrases: list[Phrase] = field(default_factory=list)


@dataclass
class ImageRecord:
    """One image and all the text that describes it.

    Attributes:
        image_id: the source's id, as a string (``"1000092795"``, ``"391895"``).
        path: where the image file is expected; ``None`` when the source names no file.
        width: image width in pixels, from the annotation (the image itself is not decoded).
        height: image height in pixels.
        captions: captions in file order.
        objects: class-labelled boxes that belong to no caption (COCO instances: one :class:`Phrase` per category
            present, ``text`` the category name, ``phrase_types=[name]``, ``entity_id`` the category id). Kept apart
            from ``captions`` so caption text stays the real text for retrieval and captioning.
    """

    image_id: str
    path: Path | None
    width: int
    height: int
    captions: list[Caption] = field(default_factory=list)
    objects: list[Phrase] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    """Something in the input that a reader skipped, repaired or could not use.

    Attributes:
        file: the file the problem is in, as given (root joined with the relative path).
        line: 1-based line number where the format has lines (sentence files, XML); ``None`` for JSON/pickle
            entries, whose position is in ``detail`` instead.
        reason: a short fixed category, e.g. ``"unknown entity id"``; problems are grouped by it.
        detail: the specifics (which id, which values), not used for grouping.
        by_design: ``True`` when the format encodes the gap on purpose (Flickr30K ``<nobndbox>``/``<scene>``
            entities, ``notvisual`` phrases): still counted, but ``strict=True`` does not fail on it.
    """

    file: str
    line: int | None
    reason: str
    detail: str = ""
    by_design: bool = False

    @property
    def where(self) -> str:
        """``file:line``, or just ``file`` when there is no line."""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ReadResult:
    """What a reader returns: the usable records and every problem met on the way.

    Attributes:
        records: image records in a deterministic order (split-file order, or sorted by id).
        problems: problems in the order they were met.
    """

    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Problem counts by reason, most frequent first (ties by reason, so the order is stable)."""
        counts = Counter(p.reason for p in self.problems)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
