"""One entry point over every dataset reader: ``FORMAT:PATH`` specs, formats looked up in the dataset registry.

A dataset is named by a spec ``FORMAT:PATH``; :func:`read_dataset` turns it into a
:class:`~weakground.data.types.ReadResult`, :func:`check_dataset` into counts and grouped problems for
``weakground data check FORMAT:PATH``. ``FORMAT`` is any dataset of the registry
(:mod:`weakground.data.sources`) that has a reader; each format lives in its own module (one module per source):

=====================  ===========================================  ================================
format                 module                                       PATH is
=====================  ===========================================  ================================
``flickr30k_entities`` :mod:`weakground.data.flickr30k_entities`    the root holding ``Sentences/``
``coco``               :mod:`weakground.data.coco`                  the root holding ``annotations/``
``referit``            :mod:`weakground.data.referit`               the refer ``data/`` root (or ``refclef/``)
``visual_genome``      :mod:`weakground.data.visual_genome`         the root holding ``region_descriptions.json``
=====================  ===========================================  ================================

How bad input is handled, in every reader:

* Fatal (always :class:`~weakground.errors.WeakgroundError`): the dataset root, its index (split list, captions
  JSON, ``region_descriptions.json``, ``refs.json``/``instances.json``) missing or unparseable, or a split the
  dataset does not have. There is nothing to skip to, so the user gets one line naming the file.
* Everything else (a missing or malformed per-image file, a box outside the image, an unknown id, an empty
  caption, a missing image file) is skipped or repaired and recorded as a :class:`~weakground.data.types.Problem`
  at its cause. With ``strict=True`` the first such problem raises ``WeakgroundError("file:line: reason")``
  instead. Gaps the format encodes on purpose (Flickr30K ``<nobndbox>``/``<scene>`` entities, ``notvisual``
  phrases) are recorded with ``by_design=True`` and never fail ``strict``: every real Flickr30K image has them.
* Boxes: non-finite or ``x2 <= x1``/``y2 <= y1`` -> skipped (``"degenerate box"``); entirely outside the image ->
  skipped; partly outside -> clipped to the image and recorded.

Readers use numpy/stdlib/PIL only, never models or torch, so ``weakground data check`` stays fast. The machinery
they share (:class:`ProblemLog`, :func:`checked_box`, JSON/XML/split-file parsing) is in
:mod:`weakground.data.parsing` and re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from weakground.data import parsing
from weakground.data.parsing import *  # noqa: F403  (re-exported: this machinery was defined here before)
from weakground.data.sources import dataset_source, disk_formats
from weakground.data.types import ReadResult
from weakground.errors import WeakgroundError

__all__ = ["read_dataset", "check_dataset", "format_check_report", "parse_spec", *parsing.__all__]


def __getattr__(name: str) -> Any:
    # FORMATS was a table of reader module paths; the registry replaced it. A read-only view derived from the
    # registry on each access (never a stale copy) keeps `fmt in FORMATS` / `sorted(FORMATS)` working.
    if name == "FORMATS":
        return MappingProxyType({fmt: dataset_source(fmt) for fmt in disk_formats()})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- public API


def parse_spec(spec: str) -> tuple[str, Path]:
    """Split ``FORMAT:PATH`` into a known format name and a path.

    Raises:
        WeakgroundError: no ``:``, an empty path, or an unknown format (the message lists the known ones).
    """
    fmt, sep, path = spec.partition(":")
    formats = disk_formats()
    known = ", ".join(formats)
    if not sep or not path:
        raise WeakgroundError(f"dataset spec {spec!r}: expected FORMAT:PATH with FORMAT one of {known}")
    if fmt not in formats:
        raise WeakgroundError(f"dataset spec {spec!r}: unknown format {fmt!r}; known: {known}")
    return fmt, Path(path)


def read_dataset(spec: str, split: str = "test", strict: bool = False, *, check_images: bool = True) -> ReadResult:
    """Read a dataset named ``FORMAT:PATH`` into image records.

    Args:
        spec: e.g. ``"flickr30k_entities:/data/flickr30k"`` or ``"coco:/data/coco"``.
        split: the split to read (``"train"``, ``"val"``, ``"test"``, a COCO ``"val2014"``, ...) or ``"all"``.
        strict: raise on the first problem (see the module docstring) instead of skipping and counting it.
        check_images: check that each image file exists (the image is never decoded); ``False`` reads the
            annotations alone.

    Returns:
        The records and the problems met.

    Raises:
        WeakgroundError: a bad spec, a fatal problem, or (``strict``) the first problem.
    """
    fmt, path = parse_spec(spec)
    read = dataset_source(fmt).read
    assert read is not None  # parse_spec accepts only formats with a reader
    return read(path, split=split, strict=strict, check_images=check_images)


def check_dataset(spec: str, split: str = "all", *, check_images: bool = True) -> dict[str, Any]:
    """Read a dataset leniently and report what it holds and what is wrong with it.

    Args:
        spec: ``FORMAT:PATH`` as for :func:`read_dataset`.
        split: the split to check; ``"all"`` (default) checks every split the dataset has.
        check_images: also check that every image file exists.

    Returns:
        ``{"spec", "split", "images", "captions", "phrases", "boxes", "objects", "problem_count",
        "by_design_count", "problems"}`` where ``phrases``/``boxes`` count grounded caption phrases and their
        boxes, ``objects`` counts class-labelled objects (COCO instances; their boxes are included in ``boxes``),
        and ``problems`` maps each reason to ``{"count", "example", "detail", "by_design"}`` (the first
        occurrence's ``file:line`` and detail), most frequent first.
    """
    result = read_dataset(spec, split=split, strict=False, check_images=check_images)
    captions = [c for r in result.records for c in r.captions]
    phrases = [p for c in captions for p in c.phrases]
    objects = [o for r in result.records for o in r.objects]
    problems: dict[str, dict[str, Any]] = {}
    for reason, count in result.summary().items():
        first = next(p for p in result.problems if p.reason == reason)
        problems[reason] = {"count": count, "example": first.where, "detail": first.detail,
                            "by_design": first.by_design}
    return {
        "spec": spec,
        "split": split,
        "images": len(result.records),
        "captions": len(captions),
        "phrases": len(phrases),
        "boxes": sum(len(p.boxes) for p in phrases) + sum(len(o.boxes) for o in objects),
        "objects": len(objects),
        "problem_count": len(result.problems),
        "by_design_count": sum(p.by_design for p in result.problems),
        "problems": problems,
    }


def format_check_report(report: dict[str, Any]) -> str:
    """Render :func:`check_dataset`'s dict as a short plain-text report (no trailing newline)."""
    lines = [f"{report['spec']} (split {report['split']})"]
    for key in ("images", "captions", "phrases", "boxes", "objects"):
        lines.append(f"  {key:<9} {report[key]:>8,}")
    if not report["problems"]:
        lines.append("problems: none")
        return "\n".join(lines)
    n_design = report["by_design_count"]
    lines.append(f"problems: {report['problem_count']:,}"
                 + (f" ({n_design:,} by design: the format marks them as having no box)" if n_design else ""))
    labels = {reason: reason + (" [by design]" if info["by_design"] else "")
              for reason, info in report["problems"].items()}
    width = max(len(label) for label in labels.values())
    for reason, info in report["problems"].items():
        example = info["example"] + (f" ({info['detail']})" if info["detail"] else "")
        lines.append(f"  {info['count']:>6,}  {labels[reason]:<{width}}  e.g. {example}")
    return "\n".join(lines)
