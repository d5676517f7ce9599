"""Flickr30K Entities (Plummer et al., ICCV 2015 / IJCV 2017), read and written in its released layout.

Layout under the root::

    Images/<id>.jpg          the Flickr30K photos
    Sentences/<id>.txt       five captions, one a line, entities marked [/EN#<id>/<type>[/<type>...] words]
    Annotations/<id>.xml     VOC-like: <size>, then <object>s with one or more <name> (entity ids) and either a
                             1-based inclusive <bndbox> or <nobndbox>/<scene> flags
    train.txt val.txt test.txt   image ids, one a line

Reading rules (see :mod:`weakground.data.readers` for how problems are handled):

* Caption text is the sentence with the markup removed, words joined by single spaces; a phrase's
  ``first_word_index`` indexes ``caption.text.split()``, as in the official ``get_sentence_data``.
* A phrase's boxes are all the boxes of its entity (several ``<object>``s may share a name, and one object may
  list several names). ``<bndbox>`` is converted with :meth:`Box.from_voc_1based` (``x1 = xmin - 1``,
  ``x2 = xmax``).
* Phrases whose entity has no box are left out of the caption and recorded: ``<nobndbox>``/``<scene>`` entities
  and ``notvisual`` phrases by design; an entity id absent from the annotation file (``"unknown entity id"``), or
  one whose boxes were all invalid, as errors. The caption itself is kept.
* A blank line is an ``"empty caption"``; a line with broken markup is skipped (``"malformed entity markup"``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from xml.etree import ElementTree as ET

from weakground.data.parsing import (
    MAX_IMAGE_SIDE,
    ProblemLog,
    XmlError,
    XmlNode,
    checked_box,
    image_path,
    image_size,
    is_file,
    parse_xml,
    read_split_ids,
    require_dir,
)
from weakground.data.types import Box, Caption, ImageRecord, Phrase, ReadResult
from weakground.errors import WeakgroundError

__all__ = ["read_flickr30k_entities", "write_flickr30k_entities", "parse_sentence"]

# "[/EN#18/people/other a red shirt]": id, one or more /types, then the phrase's words up to the first "]".
_ENTITY = re.compile(r"\[/EN#(?P<id>[^/\s\]]+)(?P<types>(?:/[^/\s\]]+)+)\s+(?P<words>[^\[\]]*?)\s*\]")


# Each image's files: Sentences/<id>.txt, Annotations/<id>.xml, Images/<id>.jpg.
_FILES = (("Sentences", ".txt"), ("Annotations", ".xml"), ("Images", ".jpg"))


class MarkupError(ValueError):
    """A sentence line whose entity markup cannot be parsed."""


def parse_sentence(line: str) -> tuple[list[str], list[tuple[str, list[str], str, int]]]:
    """Parse one marked-up Flickr30K Entities sentence.

    Args:
        line: e.g. ``"A [/EN#18/people man] in [/EN#19/clothing a red shirt] ."``.

    Returns:
        ``(words, phrases)``: the plain words (``["A", "man", "in", "a", "red", "shirt", "."]``) and, per
        entity mention, ``(entity_id, types, phrase_text, first_word_index)``
        (``("19", ["clothing"], "a red shirt", 3)``).

    Raises:
        MarkupError: an unclosed or malformed ``[/EN#...`` marker, or a marker with no words.
    """
    words: list[str] = []
    phrases: list[tuple[str, list[str], str, int]] = []
    pos = 0
    for m in _ENTITY.finditer(line):
        _plain_words(line[pos : m.start()], words)
        phrase_words = m["words"].split()
        if not phrase_words:
            raise MarkupError(f"entity EN#{m['id']} has no words")
        phrases.append((m["id"], m["types"].split("/")[1:], " ".join(phrase_words), len(words)))
        words.extend(phrase_words)
        pos = m.end()
    _plain_words(line[pos:], words)
    return words, phrases


def _plain_words(segment: str, words: list[str]) -> None:
    # Text between well-formed markers must not contain the start of another marker: that is an unclosed
    # bracket or a marker the pattern rejected (missing type, nested marker).
    marker = segment.find("[/EN#")
    if marker >= 0:
        raise MarkupError(f"unclosed or malformed entity marker near {segment[marker:marker + 30]!r}")
    words.extend(segment.split())


@dataclass
class _Annotation:
    width: int
    height: int
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # entity id -> valid boxes, file order
    no_box: dict[str, str] = field(default_factory=dict)  # entity id -> "nobndbox" | "scene"
    named: set[str] = field(default_factory=set)  # every entity id the file mentions


def read_flickr30k_entities(root: str | Path, split: str = "test", strict: bool = False, *,
                            check_images: bool = True) -> ReadResult:
    """Read one split of Flickr30K Entities into image records.

    Args:
        root: directory holding ``Sentences/``, ``Annotations/``, ``Images/`` and the split files.
        split: ``"train"``, ``"val"``, ``"test"`` (reads ``<split>.txt``), ``"all"`` (every
            ``Sentences/*.txt``, sorted by id), or ``"karpathy_train"``/``"karpathy_val"``/``"karpathy_test"``:
            the Karpathy split captioning papers report on, from ``dataset_flickr30k.json`` in ``root``
            (``images[].filename`` and ``images[].split``; ``restval`` images count as train).
        strict: raise on the first problem that is not by design.
        check_images: require ``Images/<id>.jpg`` to exist (it is not decoded).

    Returns:
        Records in split-file order, and the problems met.

    Raises:
        WeakgroundError: the root, ``Sentences/`` (for ``"all"``) or the split file is missing; or, when
            ``strict``, the first problem.
    """
    root = require_dir(Path(root), "Flickr30K Entities root")
    log = ProblemLog(strict)
    if split == "all":
        listing = require_dir(root / "Sentences", "Sentences directory")
        ids = [(p.stem, None) for p in sorted(listing.glob("*.txt"), key=lambda p: _id_key(p.stem))]
    elif split.startswith(KARPATHY_PREFIX):
        listing = root / KARPATHY_FILE
        ids = read_karpathy_ids(listing, split[len(KARPATHY_PREFIX):], log)
    else:
        listing = root / f"{split}.txt"
        ids = read_split_ids(listing)
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for image_id, line in ids:
        if image_id in seen:
            log.add(listing, line, "duplicate image id", f"image {image_id}")
            continue
        seen.add(image_id)
        record = _read_image(root, image_id, log, check_images)
        if record is not None:
            records.append(record)
    return ReadResult(records, log.problems)


KARPATHY_FILE = "dataset_flickr30k.json"
KARPATHY_PREFIX = "karpathy_"
# The Karpathy file's split names for each split asked for: "restval" images are training images.
_KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def read_karpathy_ids(path: Path, split: str, log: ProblemLog) -> list[tuple[str, int | None]]:
    """The image ids of one Karpathy split (``train`` with ``restval``, ``val``, ``test``) from
    ``dataset_flickr30k.json``, in file order; a malformed entry is a recorded problem.

    Raises:
        WeakgroundError: the file is missing, not JSON, has no ``images`` list, or ``split`` is not one of its
            splits (fatal: it is the split's index).
    """
    if split not in _KARPATHY_SPLITS:
        raise WeakgroundError(f"{path}: unknown Karpathy split {split!r} (karpathy_train, karpathy_val, "
                              "karpathy_test)")
    if not path.is_file():
        raise WeakgroundError(f"{path}: Karpathy split file not found (dataset_flickr30k.json from "
                              "Karpathy's neuraltalk2 release)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeakgroundError(f"{path}: not a JSON file ({str(exc).splitlines()[0][:120]})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise WeakgroundError(f"{path}: no \"images\" list (not a Karpathy split file)")
    wanted, ids = _KARPATHY_SPLITS[split], []
    for index, entry in enumerate(images):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.endswith(".jpg") or not isinstance(entry.get("split"), str):
            log.add(path, None, "malformed Karpathy entry", f"images[{index}] needs a .jpg filename and a split")
        elif entry["split"] in wanted:
            ids.append((name[: -len(".jpg")], None))
    return ids


def _id_key(image_id: str) -> tuple[int, int | str]:
    # Flickr ids are numbers: sort 99 before 100, and anything else after them by name.
    return (0, int(image_id)) if image_id.isdigit() else (1, image_id)


def _read_image(root: Path, image_id: str, log: ProblemLog, check_images: bool) -> ImageRecord | None:
    try:  # the id becomes file names: "../../x" or 300 characters must not reach the file system
        sentence_path, annotation_path, image_file = (image_path(root / folder, f"{image_id}{suffix}") for
                                                      folder, suffix in _FILES)
    except ValueError as exc:
        log.add(root, None, "unsafe image file name", f"image {image_id[:80]}: {exc}")
        return None
    if not is_file(sentence_path):
        log.add(sentence_path, None, "sentence file missing", f"image {image_id}")
        return None
    if not is_file(annotation_path):
        log.add(annotation_path, None, "annotation file missing", f"image {image_id}")
        return None
    if check_images and not is_file(image_file):
        log.add(image_file, None, "image file missing", f"image {image_id}")
        return None
    annotation = _read_annotation(annotation_path, log)
    if annotation is None:
        return None
    captions = _read_sentences(sentence_path, annotation_path.name, annotation, log)
    if captions is None:
        return None
    return ImageRecord(image_id, image_file, annotation.width, annotation.height, captions)


def _read_annotation(path: Path, log: ProblemLog) -> _Annotation | None:
    try:
        tree = parse_xml(path)
    except XmlError as exc:
        log.add(path, exc.line, exc.reason, exc.detail)
        return None
    except OSError as exc:
        log.add(path, None, "unreadable file", exc.strerror or str(exc))
        return None
    size = tree.find("size")
    try:
        if size is None:
            raise ValueError
        # image_size bounds them: a width of 400 digits would overflow when boxes are checked against it
        width, height = image_size(int(size.findtext("width") or ""), int(size.findtext("height") or ""))
    except ValueError:
        log.add(path, (size if size is not None else tree).line, "missing or invalid <size>",
                f"needs <width> and <height> in 1..{MAX_IMAGE_SIDE} pixels")
        return None
    annotation = _Annotation(width, height)
    for obj in tree.findall("object"):
        names = [n.text.strip() for n in obj.findall("name") if n.text.strip()]
        if not names:
            log.add(path, obj.line, "object without <name>")
            continue
        annotation.named.update(names)
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            # As in the official reader, a <bndbox> wins over any nobndbox/scene flag on the same object.
            box = _read_bndbox(bndbox, path, names, annotation, log)
            for name in names:
                annotation.boxes.setdefault(name, [])
                if box is not None:
                    annotation.boxes[name].append(box)
            continue
        kind = "scene" if _flag(obj, "scene") else "nobndbox" if _flag(obj, "nobndbox") else None
        if kind is None:
            log.add(path, obj.line, "object has neither <bndbox> nor a nobndbox/scene flag",
                    f"entity {', '.join(names)}")
            continue
        for name in names:
            annotation.no_box.setdefault(name, kind)
    return annotation


def _read_bndbox(node: XmlNode, path: Path, names: list[str], annotation: _Annotation,
                 log: ProblemLog) -> Box | None:
    detail = f"entity {', '.join(names)}"
    try:
        coords = [float(node.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax")]
    except ValueError:
        log.add(path, node.line, "malformed <bndbox>", f"{detail}: needs numeric xmin, ymin, xmax, ymax")
        return None
    return checked_box(Box.from_voc_1based(*coords), annotation.width, annotation.height, log, path, node.line,
                       detail)


def _flag(obj: XmlNode, tag: str) -> bool:
    # Real files carry both flags on box-less objects, one of them 0: "<nobndbox>1</nobndbox><scene>0</scene>".
    text = obj.findtext(tag)
    return text is not None and text not in ("", "0")


def _read_sentences(path: Path, annotation_name: str, annotation: _Annotation,
                    log: ProblemLog) -> list[Caption] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        log.add(path, None, "not UTF-8 text", f"{exc.reason} at byte {exc.start}")
        return None
    except OSError as exc:
        log.add(path, None, "unreadable file", exc.strerror or str(exc))
        return None
    captions: list[Caption] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            log.add(path, line_no, "empty caption")
            continue
        try:
            words, mentions = parse_sentence(line)
        except MarkupError as exc:
            log.add(path, line_no, "malformed entity markup", str(exc))
            continue
        phrases: list[Phrase] = []
        for entity_id, types, phrase_text, first in mentions:
            detail = f"EN#{entity_id} {phrase_text!r}"
            boxes = annotation.boxes.get(entity_id)
            if boxes:
                phrases.append(Phrase(phrase_text, list(boxes), types, entity_id, first))
            elif entity_id in annotation.no_box:
                log.add(path, line_no, f"entity has no box ({annotation.no_box[entity_id]})", detail,
                        by_design=True)
            elif entity_id in annotation.named:
                log.add(path, line_no, "entity's boxes were all invalid", detail)
            elif "notvisual" in types:
                log.add(path, line_no, "not-visual entity", detail, by_design=True)
            else:
                log.add(path, line_no, "unknown entity id", f"{detail} is not in {annotation_name}")
        captions.append(Caption(" ".join(words), phrases))
    return captions


# ------------------------------------------------------------------------------------------------- writer


def write_flickr30k_entities(records: Iterable[ImageRecord], root: str | Path, splits: dict[str, list[str]], *,
                             copy_images: bool = True) -> None:
    """Write records in the exact Flickr30K Entities layout, so :func:`read_flickr30k_entities` reads them back.

    Each caption is written with ``[/EN#<entity_id>/<types> words]`` markup around its phrases (located by
    ``first_word_index``); each entity's boxes become one ``<object>`` each with a 1-based inclusive
    ``<bndbox>``, and an entity whose phrases have no boxes becomes ``<nobndbox>1</nobndbox>`` (read back as a
    by-design skip). Boxes are rounded to whole pixels, as the format stores integers. COCO-style ``objects``
    have no place in this format and are not written.

    Args:
        records: the images to write.
        root: output directory (created).
        splits: split name -> image ids, written as ``<name>.txt``.
        copy_images: copy each existing ``record.path`` to ``Images/<id>.jpg`` (unless it is already there).

    Raises:
        ValueError: a record the format cannot express: an empty caption, a phrase without ``entity_id``,
            ``first_word_index`` or types, a phrase whose words differ from the caption's words at its index,
            overlapping phrases, one entity with different boxes in different phrases, or a split id that is not
            among the records.
    """
    root = Path(root)
    for sub in ("Sentences", "Annotations", "Images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    for record in records:
        lines, entities = _markup_captions(record)
        (root / "Sentences" / f"{record.image_id}.txt").write_text("".join(line + "\n" for line in lines),
                                                                   encoding="utf-8")
        (root / "Annotations" / f"{record.image_id}.xml").write_text(_annotation_xml(record, entities),
                                                                     encoding="utf-8")
        destination = root / "Images" / f"{record.image_id}.jpg"
        if copy_images and record.path is not None and record.path.is_file():
            if not destination.exists() or not destination.samefile(record.path):
                shutil.copyfile(record.path, destination)
        written.add(record.image_id)
    for name, ids in splits.items():
        unknown = [i for i in ids if i not in written]
        if unknown:
            raise ValueError(f"split {name!r} lists image ids that were not written: {unknown[:5]}")
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def _markup_captions(record: ImageRecord) -> tuple[list[str], dict[str, list[Box]]]:
    """Each caption as a marked-up line, and each entity's boxes in first-mention order."""
    lines: list[str] = []
    entities: dict[str, list[Box]] = {}
    where = f"image {record.image_id}"
    for caption in record.captions:
        words = caption.text.split()
        if not words:
            raise ValueError(f"{where}: empty caption cannot be written (it reads back as a problem)")
        out: list[str] = []
        pos = 0
        for phrase in sorted(caption.phrases, key=lambda p: p.first_word_index if p.first_word_index is not None
                             else -1):
            if phrase.entity_id is None or phrase.first_word_index is None or not phrase.phrase_types:
                raise ValueError(f"{where}: phrase {phrase.text!r} needs entity_id, first_word_index and a type")
            span = phrase.text.split()
            start = phrase.first_word_index
            if start < pos or words[start : start + len(span)] != span:
                raise ValueError(f"{where}: phrase {phrase.text!r} does not match caption {caption.text!r} at word "
                                 f"{start} (or overlaps another phrase)")
            out.extend(words[pos:start])
            out.append(f"[/EN#{phrase.entity_id}/{'/'.join(phrase.phrase_types)} {' '.join(span)}]")
            pos = start + len(span)
            known = entities.setdefault(phrase.entity_id, list(phrase.boxes))
            if known != phrase.boxes:
                raise ValueError(f"{where}: entity {phrase.entity_id} has different boxes in different phrases")
        out.extend(words[pos:])
        lines.append(" ".join(out))
    return lines, entities


def _annotation_xml(record: ImageRecord, entities: dict[str, list[Box]]) -> str:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "filename").text = f"{record.image_id}.jpg"
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for entity_id, boxes in entities.items():
        for box in boxes or [None]:
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = entity_id
            if box is None:
                ET.SubElement(obj, "nobndbox").text = "1"
                ET.SubElement(obj, "scene").text = "0"
                continue
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box.to_voc_1based()):
                ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(annotation, space="  ")
    return ET.tostring(annotation, encoding="unicode") + "\n"
