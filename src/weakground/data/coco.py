"""MS-COCO captions (and, when present, instance boxes), read and written in the released JSON layout.

Layout under the root::

    annotations/captions_<split>.json    {"images": [{id, file_name, width, height}, ...],
                                          "annotations": [{id, image_id, caption}, ...]}
    annotations/instances_<split>.json   optional: {"categories": [{id, name}], "annotations":
                                          [{image_id, category_id, bbox: [x, y, w, h]}, ...]}
    <split>/<file_name>                  the images (``images/<split>/`` and ``images/`` are looked in too)

``split`` is the file-name suffix (``"val2014"``, ``"train2017"``); ``"val"`` finds ``val2017`` then
``val2014`` when there is no ``captions_val.json``; ``"all"`` reads every ``captions_*.json``.

Choice for instance boxes: they are **not** turned into a synthetic caption. Each category present in an image
becomes one :class:`~weakground.data.types.Phrase` in :attr:`ImageRecord.objects` (``text`` and
``phrase_types=[name]`` the category name, ``entity_id`` the category id, every box of that category in file
order; categories sorted by id). Captions stay the real captions (no phrases: COCO does not link caption words to
boxes), so retrieval and captioning see real text and class-level grounding sees real boxes. Crowd boxes are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from weakground.data.parsing import (
    ProblemLog,
    checked_box,
    image_path,
    image_size,
    is_file,
    load_json,
    normalize_text,
    require_dir,
)
from weakground.data.types import Box, Caption, ImageRecord, Phrase, ReadResult
from weakground.errors import WeakgroundError

__all__ = ["read_coco", "write_coco_captions"]


def read_coco(root: str | Path, split: str = "test", strict: bool = False, *,
              check_images: bool = True) -> ReadResult:
    """Read COCO captions (and instance boxes when ``instances_<split>.json`` exists) into image records.

    Args:
        root: directory holding ``annotations/``.
        split: captions file suffix (``"val2014"``), a short name (``"val"``), or ``"all"``.
        strict: raise on the first problem.
        check_images: require each image file to exist (it is not decoded).

    Returns:
        Records in the captions file's image order, and the problems met.

    Raises:
        WeakgroundError: the root or the captions file is missing or malformed (the message lists the captions
            files there are), or, when ``strict``, the first problem.
    """
    root = require_dir(Path(root), "COCO root")
    annotations = require_dir(root / "annotations", "COCO annotations directory")
    log = ProblemLog(strict)
    records: dict[str, ImageRecord] = {}
    for name in _resolve_splits(annotations, split):
        _read_split(root, annotations, name, records, log, check_images)
    return ReadResult(list(records.values()), log.problems)


def _resolve_splits(annotations: Path, split: str) -> list[str]:
    available = sorted(p.name[len("captions_"):-len(".json")] for p in annotations.glob("captions_*.json"))
    if split == "all" and available:
        return available
    for name in (split, f"{split}2017", f"{split}2014"):
        if name in available:
            return [name]
    raise WeakgroundError(f"{annotations / f'captions_{split}.json'}: captions file not found; "
                          f"available splits: {', '.join(available) or 'none'}")


def _image_dir(root: Path, split: str) -> Path:
    # The official zips unpack to <root>/<split>/; many setups nest them under images/.
    for candidate in (root / split, root / "images" / split, root / "images"):
        if candidate.is_dir():
            return candidate
    return root / split


def _entries(data: Any, key: str, path: Path) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise WeakgroundError(f"{path}: not a COCO annotation file (needs a {key!r} list)")
    return data[key]


def _read_split(root: Path, annotations: Path, split: str, records: dict[str, ImageRecord], log: ProblemLog,
                check_images: bool) -> None:
    captions_path = annotations / f"captions_{split}.json"
    data = load_json(captions_path, "COCO captions file")
    images, captions = _entries(data, "images", captions_path), _entries(data, "annotations", captions_path)
    image_dir = _image_dir(root, split)
    here: dict[str, ImageRecord] = {}
    skipped: set[str] = set()  # images already reported; their captions and boxes go with them, uncounted
    for i, entry in enumerate(images):
        try:
            image_id, file_name = str(entry["id"]), entry["file_name"]
            width, height = image_size(entry["width"], entry["height"])
        except (KeyError, TypeError, ValueError) as exc:
            log.add(captions_path, None, "malformed image entry",
                    f"images[{i}]: needs id, file_name, width, height" + (f" ({exc})" if str(exc) else ""))
            continue
        if image_id in records or image_id in here:
            log.add(captions_path, None, "duplicate image id", f"images[{i}]: id {image_id[:80]}")
            continue
        try:
            path = image_path(image_dir, file_name)
        except ValueError as exc:
            log.add(captions_path, None, "unsafe image file name", f"images[{i}]: {exc}")
            continue
        if check_images and not is_file(path):
            log.add(path, None, "image file missing", f"images[{i}]: id {image_id}")
            skipped.add(image_id)
            continue
        here[image_id] = ImageRecord(image_id, path, width, height)
    for j, entry in enumerate(captions):
        where = f"annotations[{j}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str) or "image_id" not in entry:
            log.add(captions_path, None, "malformed caption entry", f"{where}: needs image_id and a caption string")
            continue
        image_id = str(entry["image_id"])
        if image_id in skipped:
            continue
        if image_id not in here:
            log.add(captions_path, None, "caption for unknown image id", f"{where}: image_id {image_id}")
            continue
        text = normalize_text(entry["caption"])
        if not text:
            log.add(captions_path, None, "empty caption", f"{where}: id {entry.get('id')}")
            continue
        here[image_id].captions.append(Caption(text))
    instances_path = annotations / f"instances_{split}.json"
    if instances_path.is_file():
        _read_instances(instances_path, here, skipped, log)
    records.update(here)


def _read_instances(path: Path, records: dict[str, ImageRecord], skipped: set[str], log: ProblemLog) -> None:
    data = load_json(path, "COCO instances file")
    names: dict[int, str] = {}
    for i, cat in enumerate(_entries(data, "categories", path)):
        try:
            names[int(cat["id"])] = str(cat["name"])
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: an id of 1e999 (infinity)
            log.add(path, None, "malformed category entry", f"categories[{i}]: needs an integer id and a name")
    grouped: dict[str, dict[int, list[Box]]] = {}
    for j, entry in enumerate(_entries(data, "annotations", path)):
        where = f"annotations[{j}] (id {entry.get('id') if isinstance(entry, dict) else '?'})"
        try:
            image_id, category = str(entry["image_id"]), int(entry["category_id"])
            if not isinstance(entry["bbox"], list):  # a string "1234" would otherwise unpack as four digits
                raise TypeError
            x, y, w, h = (float(v) for v in entry["bbox"])
        # OverflowError: an infinite id, or an integer too large for a float
        except (KeyError, TypeError, ValueError, OverflowError):
            log.add(path, None, "malformed instance entry", f"{where}: needs image_id, category_id, bbox [x, y, w, h]")
            continue
        if image_id in skipped:
            continue
        if image_id not in records:
            log.add(path, None, "instance for unknown image id", f"{where}: image_id {image_id}")
            continue
        if category not in names:
            log.add(path, None, "unknown category id", f"{where}: category_id {category}")
            continue
        record = records[image_id]
        box = checked_box(Box.from_xywh(x, y, w, h), record.width, record.height, log, path, None, where)
        if box is not None:
            grouped.setdefault(image_id, {}).setdefault(category, []).append(box)
    for image_id, by_category in grouped.items():
        records[image_id].objects = [Phrase(names[c], by_category[c], [names[c]], str(c)) for c in sorted(by_category)]


# ------------------------------------------------------------------------------------------------- writer


def write_coco_captions(records: Iterable[ImageRecord], path_captions: str | Path,
                        path_instances: str | Path | None = None, *, image_dir: str | Path | None = None) -> None:
    """Write records as COCO ``captions_*.json`` (and ``instances_*.json``), readable by :func:`read_coco`.

    Caption phrases are not written (the captions format has no place for them); ``record.objects`` become
    instance annotations (one per box, category id from ``entity_id``, name from ``text``). Annotation ids are
    numbered from 1 in write order. For the reader to find the files, use
    ``<root>/annotations/captions_<split>.json`` and put the images in ``<root>/<split>/``.

    Args:
        records: images to write; ``image_id`` must be an integer string (COCO ids are integers).
        path_captions: the captions JSON to write (parent directories are created).
        path_instances: the instances JSON to write, or ``None`` for none.
        image_dir: when given, copy each existing ``record.path`` there under its file name.

    Raises:
        ValueError: a non-integer image id or object category id, or one category id with two names.
    """
    records = list(records)
    images = []
    captions = []
    instances = []
    categories: dict[int, str] = {}
    for record in records:
        if not record.image_id.isdigit():
            raise ValueError(f"image id {record.image_id!r}: COCO image ids are integers")
        image_id = int(record.image_id)
        file_name = record.path.name if record.path is not None else f"{record.image_id}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": record.width, "height": record.height})
        for caption in record.captions:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": caption.text})
        for obj in record.objects:
            if obj.entity_id is None or not obj.entity_id.isdigit():
                raise ValueError(f"image {record.image_id}: object {obj.text!r} needs an integer category entity_id")
            category = int(obj.entity_id)
            if categories.setdefault(category, obj.text) != obj.text:
                raise ValueError(f"category {category} is named both {categories[category]!r} and {obj.text!r}")
            for box in obj.boxes:
                instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": category,
                                  "bbox": box.as_xywh(), "area": box.area, "iscrowd": 0, "segmentation": []})
        if image_dir is not None and record.path is not None and record.path.is_file():
            destination = Path(image_dir) / file_name
            destination.parent.mkdir(parents=True, exist_ok=True)
            if not destination.exists() or not destination.samefile(record.path):
                shutil.copyfile(record.path, destination)
    info = {"description": "written by weakground", "version": "1.0"}
    _dump({"info": info, "licenses": [], "images": images, "annotations": captions}, Path(path_captions))
    if path_instances is not None:
        cats = [{"id": c, "name": n, "supercategory": n} for c, n in sorted(categories.items())]
        _dump({"info": info, "licenses": [], "images": images, "annotations": instances, "categories": cats},
              Path(path_instances))


def _dump(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
