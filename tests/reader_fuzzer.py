"""The seeded mutation engine behind the reader fuzz test and ``benchmarks/reliability_fuzz.py``.

One mutation changes one file of a copied fixture: JSON files get a value replaced or a key deleted (or the text
cut short); text and XML files (Flickr30K Entities) and the one image whose header Visual Genome reads get a line
or token replaced, deleted or duplicated, a number swapped for a hostile one, a tag broken, bytes that are not
UTF-8, or the text cut short. :func:`run_one` reads the mutated dataset and classifies the outcome; an audit hook
watches every file the reader opens or lists, so a path leaving the dataset folder is counted even when the reader
does not crash.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from weakground.data.coco import read_coco
from weakground.data.flickr30k_entities import read_flickr30k_entities
from weakground.data.referit import read_referit
from weakground.data.visual_genome import read_visual_genome
from weakground.errors import WeakgroundError

FIXTURES = Path(__file__).parent / "fixtures"

# NaN is written as the bare ``NaN`` Python's json module reads; 10**400 is an integer no float can hold.
_VALUES = [None, -1, 0, 1e308, "@INF@", "s" * 300, "../../x", "/etc/passwd", [], {}, "abc", True, float("nan"),
           10**400, "a\u0000b"]
_TOKENS = ["", "-1", "0", "1e999", "nan", "inf", "99999999999999999999", "9" * 400, "abc", "../../x", "/etc/passwd",
           "s" * 300, "[/EN#", "]", "[/EN#7/ ]", "<", "</object>", "<!DOCTYPE a [<!ENTITY x 'y'>]>", "&x;", "\t",
           "[/EN#../../x/people a man]", "..", "100", "\u00e9\u4e2d"]


@dataclass(frozen=True)
class Format:
    """A fuzzed format: how to read its fixture copy, and which of its files to mutate."""

    fixture: str
    read: Callable[[Path], object]
    files: tuple[str, ...]


FORMATS = {
    "coco": Format("coco", lambda r: read_coco(r, "val"),
                   ("annotations/captions_val2017.json", "annotations/instances_val2017.json")),
    "referit": Format("referit", lambda r: read_referit(r, "test"), ("refclef/refs.json", "refclef/instances.json")),
    # Image 3 has no size in image_data.json, so its file's header is read: mutating it fuzzes that path too.
    "visual_genome": Format("visual_genome", lambda r: read_visual_genome(r, "all"),
                            ("region_descriptions.json", "image_data.json", "VG_100K/3.jpg")),
    "flickr30k_entities": Format(
        "flickr30k_entities", lambda r: read_flickr30k_entities(r, "test"),
        ("test.txt", "Sentences/100.txt", "Sentences/200.txt", "Sentences/300.txt", "Annotations/100.xml",
         "Annotations/200.xml", "Annotations/300.xml")),
}


# ------------------------------------------------------------------------------------------------ mutations


def _slots(node, out):
    """Every (container, key) holding a value, so one can be replaced or deleted."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


def mutate_json(text: str, rng: random.Random) -> str:
    """One value replaced by a hostile one or one key deleted; one time in ten the text cut short."""
    if rng.random() < 0.1:
        return text[: rng.randrange(len(text))]
    data = json.loads(text)
    slots = _slots(data, [])
    if not slots:
        return text
    node, key = rng.choice(slots)
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
    else:
        node[key] = rng.choice(_VALUES)
    return json.dumps(data).replace('"@INF@"', "1e999")


def mutate_text(data: bytes, rng: random.Random) -> bytes:
    """One line- or token-level change to a text or XML file (a few times in ten, two changes)."""
    for _ in range(1 + (rng.random() < 0.3)):
        data = _one_text_change(data, rng)
    return data


def _one_text_change(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0 and data:
        return data[: rng.randrange(len(data))]
    if kind == 1:  # bytes that are not UTF-8, or a NUL
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.choice([b"\xff\xfe", b"\x00", b"\xc3"]) + data[at:]
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    at = rng.randrange(len(lines))
    if kind == 2:
        del lines[at]
    elif kind == 3:
        lines.insert(at, lines[rng.randrange(len(lines))])
    elif kind == 4:
        lines[at] = rng.choice(_TOKENS)
    else:  # replace one whitespace/markup-separated token of a line (numbers and tag text in XML)
        lines[at] = _replace_token(lines[at], rng)
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def _replace_token(line: str, rng: random.Random) -> str:
    cuts = [i for i, ch in enumerate(line) if ch in " <>[]/#"] or [0]
    start = rng.choice(cuts)
    end = next((i for i in cuts if i > start), len(line))
    return line[: start + 1] + rng.choice(_TOKENS) + line[end:]


def mutate(path: Path, original: bytes, rng: random.Random) -> None:
    """Write one mutation of ``original`` (the file's clean content) to ``path``."""
    if path.suffix == ".json":
        path.write_text(mutate_json(original.decode("utf-8"), rng))
    else:
        path.write_bytes(mutate_text(original, rng))


# ------------------------------------------------------------------------------------------ path watching

_WATCH: dict[str, object] = {"root": None, "escapes": []}
_AUDITED = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "shutil.copyfile", "os.mkdir"}


def _audit(event: str, args: tuple) -> None:
    root = _WATCH["root"]
    if root is None or event not in _AUDITED or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    if not path or event == "open" and not os.path.isabs(path) and path.isdigit():
        return
    normal = os.path.normpath(os.path.join(os.getcwd(), path))
    if normal != root and not normal.startswith(root + os.sep) and not _importing():
        _WATCH["escapes"].append(f"{event} {path[:120]}")


def _importing() -> bool:
    """Whether the event comes from the import system (a reader's lazy ``from PIL import Image`` lists
    ``sys.path`` and opens ``.pyc`` files: not the dataset's paths leaking)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


_HOOKED = False


def _ensure_hook() -> None:
    # An audit hook cannot be removed; it does nothing unless _WATCH["root"] is set (only inside run_one).
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True


def _escaping_records(result, root: Path) -> list[str]:
    out = []
    for record in getattr(result, "records", []):
        path = getattr(record, "path", None)
        if path is None:
            continue
        normal = os.path.normpath(os.path.join(str(root), str(path)))
        if not normal.startswith(str(root) + os.sep):
            out.append(f"record {record.image_id!r} path {str(path)[:120]}")
    return out


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one read of a mutated dataset did: ``kind`` is clean, problems, error or crash."""

    kind: str
    detail: str
    escapes: list[str]


def run_one(fmt: Format, root: Path) -> Outcome:
    """Read the (mutated) copy at ``root`` and classify the outcome; escapes lists paths outside ``root``."""
    _ensure_hook()
    _WATCH["root"], _WATCH["escapes"] = os.path.normpath(str(root.resolve())), []
    result = None
    try:
        result = fmt.read(root)
    except WeakgroundError as exc:
        message = str(exc)
        kind = "crash" if "\n" in message or not message.strip() else "error"
        outcome = Outcome(kind, f"WeakgroundError: {message[:300]!r}", [])
    except Exception as exc:  # noqa: BLE001 - any other escape is what the fuzzer looks for
        outcome = Outcome("crash", f"{type(exc).__name__}: {str(exc)[:300]}", [])
    else:
        outcome = Outcome("problems" if result.problems else "clean", "", [])
    finally:
        escapes = list(_WATCH["escapes"])
        _WATCH["root"] = None
    outcome.escapes = escapes + _escaping_records(result, root.resolve())
    return outcome


# Decoys beside the copy, where a "../../x" file name or image id lands: a reader that follows one opens a file
# outside the dataset (which the audit hook sees) instead of quietly finding nothing there.
_DECOYS = ("x", "x.txt", "x.xml", "x.jpg", "x.json")


def copy_fixture(fmt: Format, dest: Path) -> tuple[Path, dict[str, bytes]]:
    """Copy the format's fixture under ``dest`` (with decoys beside it); return the copy and its mutable files'
    clean bytes."""
    root = dest / fmt.fixture
    shutil.copytree(FIXTURES / fmt.fixture, root)
    for name in _DECOYS:
        (dest / name).write_text("decoy outside the dataset\n")
    return root, {f: (root / f).read_bytes() for f in fmt.files if (root / f).is_file()}


def fuzz(fmt: Format, root: Path, originals: dict[str, bytes], seeds: range):
    """Yield ``(seed, target, outcome)`` for each seed: mutate one file, read, restore it."""
    for seed in seeds:
        rng = random.Random(seed)
        target = rng.choice(sorted(originals))
        mutate(root / target, originals[target], rng)
        try:
            yield seed, target, run_one(fmt, root)
        finally:
            (root / target).write_bytes(originals[target])
