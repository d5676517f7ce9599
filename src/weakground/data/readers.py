"""One entry point over every dataset reader, and the machinery the readers share.

A dataset is named by a spec ``FORMAT:PATH``; :func:`read_dataset` turns it into a
:class:`~weakground.data.types.ReadResult`, :func:`check_dataset` into counts and grouped problems for
``weakground data check FORMAT:PATH``. Each format lives in its own module (one module per source):

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

Readers use numpy/stdlib/PIL only, never models or torch, so ``weakground data check`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from xml.parsers import expat

from weakground.data.types import Box, Problem, ReadResult
from weakground.errors import WeakgroundError

__all__ = [
    "FORMATS",
    "read_dataset",
    "check_dataset",
    "format_check_report",
    "parse_spec",
    "ProblemLog",
    "checked_box",
    "load_json",
    "parse_xml",
    "XmlNode",
    "XmlError",
    "require_dir",
    "read_split_ids",
    "normalize_text",
]

# Format name -> "module:function"; imported on demand so that reading COCO never imports the XML reader.
FORMATS: dict[str, str] = {
    "flickr30k_entities": "weakground.data.flickr30k_entities:read_flickr30k_entities",
    "coco": "weakground.data.coco:read_coco",
    "referit": "weakground.data.referit:read_referit",
    "visual_genome": "weakground.data.visual_genome:read_visual_genome",
}


# --------------------------------------------------------------------------------------------- public API


def parse_spec(spec: str) -> tuple[str, Path]:
    """Split ``FORMAT:PATH`` into a known format name and a path.

    Raises:
        WeakgroundError: no ``:``, an empty path, or an unknown format (the message lists the known ones).
    """
    fmt, sep, path = spec.partition(":")
    known = ", ".join(sorted(FORMATS))
    if not sep or not path:
        raise WeakgroundError(f"dataset spec {spec!r}: expected FORMAT:PATH with FORMAT one of {known}")
    if fmt not in FORMATS:
        raise WeakgroundError(f"dataset spec {spec!r}: unknown format {fmt!r}; known: {known}")
    return fmt, Path(path)


def _reader(fmt: str) -> Callable[..., ReadResult]:
    module, _, func = FORMATS[fmt].partition(":")
    return getattr(importlib.import_module(module), func)


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
    return _reader(fmt)(path, split=split, strict=strict, check_images=check_images)


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


# ---------------------------------------------------------------------------------- shared reader machinery


@dataclass
class ProblemLog:
    """Collects problems; in strict mode turns the first one that is not by design into a WeakgroundError."""

    strict: bool = False
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str | Path, line: int | None, reason: str, detail: str = "", by_design: bool = False) -> None:
        """Record a problem, or raise it when strict (and it is not a gap the format encodes on purpose)."""
        problem = Problem(str(file), line, reason, detail, by_design)
        if self.strict and not by_design:
            raise WeakgroundError(str(problem))
        self.problems.append(problem)


def checked_box(box: Box, width: float, height: float, log: ProblemLog, file: str | Path, line: int | None,
                detail: str = "") -> Box | None:
    """Validate a box against its image: skip degenerate or outside boxes, clip partly outside ones.

    Every skip or clip is recorded in ``log`` (reasons ``"degenerate box"``, ``"box entirely outside the
    image"``, ``"box partly outside the image (clipped)"``).

    Returns:
        The box (clipped if needed), or ``None`` when it is unusable.
    """
    coords = box.as_list()
    if not all(math.isfinite(c) for c in coords) or box.x2 <= box.x1 or box.y2 <= box.y1:
        log.add(file, line, "degenerate box", _join(detail, f"box {_fmt_box(box)}"))
        return None
    if box.x2 <= 0 or box.y2 <= 0 or box.x1 >= width or box.y1 >= height:
        log.add(file, line, "box entirely outside the image",
                _join(detail, f"box {_fmt_box(box)} on a {width:g}x{height:g} image"))
        return None
    clipped = box.clip(width, height)
    if clipped != box:
        log.add(file, line, "box partly outside the image (clipped)",
                _join(detail, f"box {_fmt_box(box)} -> {_fmt_box(clipped)} on a {width:g}x{height:g} image"))
    return clipped


def _fmt_box(box: Box) -> str:
    return "[" + ", ".join(f"{c:g}" for c in box.as_list()) + "]"


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a WeakgroundError naming it (a fatal problem)."""
    if not path.is_dir():
        raise WeakgroundError(f"{path}: {what} not found")
    return path


def load_json(path: Path, what: str = "JSON file") -> Any:
    """Load a whole JSON file; a missing, unreadable or malformed file is fatal and named with its line.

    Raises:
        WeakgroundError: ``"{path}: {what} not found"`` or ``"{path}:{line}: malformed JSON (...)"``.
    """
    if not path.is_file():
        raise WeakgroundError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise WeakgroundError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise WeakgroundError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise WeakgroundError(f"{path}: cannot read ({exc.strerror})") from None


def read_split_ids(path: Path) -> list[tuple[str, int]]:
    """Image ids listed one a line in a split file, with their 1-based line numbers; blank lines ignored.

    Raises:
        WeakgroundError: the split file is missing or not UTF-8 (fatal: it is the dataset's index).
    """
    if not path.is_file():
        raise WeakgroundError(f"{path}: split file not found (expected one image id a line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WeakgroundError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [(line.strip(), n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace (newlines, double spaces, edges) to single spaces.

    Real caption files carry stray whitespace ("A  cat\\n"); it never carries meaning, and a single-space form
    makes ``text.split()`` word indices and round trips stable.
    """
    return " ".join(text.split())


# ----------------------------------------------------------------------------------- XML with line numbers


@dataclass
class XmlNode:
    """An element of a parsed XML file, with the line it starts on (for ``file:line`` problems)."""

    tag: str
    line: int
    text: str = ""
    children: list[XmlNode] = field(default_factory=list)

    def find(self, tag: str) -> XmlNode | None:
        """The first child named ``tag``, or ``None``."""
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        """Every child named ``tag``, in file order."""
        return [c for c in self.children if c.tag == tag]

    def findtext(self, tag: str) -> str | None:
        """The stripped text of the first child named ``tag``, or ``None`` when there is no such child."""
        child = self.find(tag)
        return None if child is None else child.text.strip()


class XmlError(Exception):
    """An XML file that cannot be parsed or is refused; ``line`` is where, ``reason`` the problem category."""

    def __init__(self, reason: str, line: int | None, detail: str) -> None:
        super().__init__(f"{reason} at line {line}: {detail}")
        self.reason, self.line, self.detail = reason, line, detail


def parse_xml(path: Path) -> XmlNode:
    """Parse a small XML file with expat into :class:`XmlNode`s that know their line numbers.

    ``xml.etree`` keeps no line numbers, which ``file:line`` problems need. Entity declarations are refused
    outright (annotation files never need them), which rules out entity-expansion bombs and external entities
    without depending on defusedxml.

    Raises:
        XmlError: reason ``"malformed XML"`` or ``"XML with entity declarations refused"``.
        OSError: the file cannot be read (callers check existence first).
    """
    data = path.read_bytes()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    root: list[XmlNode] = []
    stack: list[XmlNode] = []

    def start(tag: str, _attrs: dict[str, str]) -> None:
        node = XmlNode(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if stack:
            stack[-1].text += text

    def refuse_entity(name: str, *_args: Any) -> None:
        raise XmlError("XML with entity declarations refused", parser.CurrentLineNumber,
                       f"declares entity {name!r}")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.EntityDeclHandler = refuse_entity
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmlError("malformed XML", exc.lineno, expat.ErrorString(exc.code)) from None
    return root[0]
