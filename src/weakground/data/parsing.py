"""The machinery every dataset reader shares: the problem log, box checks, and JSON, XML and split-file parsing.

How each reader uses it to handle bad input is described in :mod:`weakground.data.readers`. It lives apart from
that module's entry point (:func:`~weakground.data.readers.read_dataset`) because the entry point looks formats
up in the dataset registry, which names the reader modules, and those import this: one direction, no cycle.
Numpy/stdlib only, never models or torch.
"""

from __future__ import annotations

import json
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from weakground.data.types import Box, Problem
from weakground.errors import WeakgroundError

__all__ = [
    "ProblemLog",
    "checked_box",
    "load_json",
    "parse_xml",
    "XmlNode",
    "XmlError",
    "require_dir",
    "read_split_ids",
    "normalize_text",
    "image_size",
    "image_path",
    "is_file",
    "MAX_IMAGE_SIDE",
]

# Larger than any real photo (the biggest in these datasets are a few thousand pixels); a size beyond it is a
# corrupt or hostile entry, and accepting it would let boxes of any size through the outside-the-image check.
MAX_IMAGE_SIDE = 100_000
# Most file systems refuse longer names with OSError; refusing them here turns that into a recorded problem.
_MAX_NAME = 255


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


def image_size(width: Any, height: Any) -> tuple[int, int]:
    """``(width, height)`` as whole pixels; ValueError unless both are finite numbers in 1..MAX_IMAGE_SIDE.

    Bools and strings are refused: JSON ``true`` or ``"32"`` as a size is a broken entry, not a size.
    """
    sides = []
    for side in (width, height):
        # isfinite only on floats: an int of 400 digits is finite, and converting it to float overflows
        if isinstance(side, bool) or not isinstance(side, (int, float)) or (isinstance(side, float)
                                                                             and not math.isfinite(side)):
            raise ValueError(f"size {width!r:.40}x{height!r:.40} is not two finite numbers")
        if not 0 < side <= MAX_IMAGE_SIDE:
            raise ValueError(f"size {width!r:.40}x{height!r:.40} is outside 1..{MAX_IMAGE_SIDE} pixels")
        sides.append(int(side))
    return sides[0], sides[1]


def image_path(image_dir: Path, name: Any) -> Path:
    """``image_dir / name``; ValueError when ``name`` is not a plain relative path that stays inside the folder.

    Annotation files are downloads: a ``file_name`` of ``/etc/passwd`` or ``../../x`` must not make a reader
    (or a later copy or decode of ``record.path``) touch files outside the dataset.
    """
    if not isinstance(name, (str, int)) or isinstance(name, bool):
        raise ValueError(f"file name {name!r} is not a string")
    text = str(name)
    if not text or "\0" in text or Path(text).is_absolute() or text.startswith(("/", "\\")):
        raise ValueError(f"file name {text[:80]!r} is empty or absolute")
    if any(len(part) > _MAX_NAME for part in Path(text).parts):
        raise ValueError(f"file name {text[:40]!r}... is longer than {_MAX_NAME} characters")
    # Checked on the text, not with resolve(): images folders are often symlinks into shared storage, and
    # following them would refuse every file of such a dataset.
    normal = os.path.normpath(text.replace("\\", "/"))
    if normal == "." or normal == ".." or normal.startswith("../"):
        raise ValueError(f"file name {text[:80]!r} leaves the image folder")
    return image_dir / text


def is_file(path: Path) -> bool:
    """``path.is_file()``, but ``False`` instead of OSError for a name the file system refuses."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


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
    except (ValueError, RecursionError) as exc:  # an integer with thousands of digits, or nesting too deep
        raise WeakgroundError(f"{path}: malformed JSON ({str(exc)[:100]})") from None
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
