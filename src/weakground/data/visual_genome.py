"""Visual Genome region descriptions (Krishna et al., IJCV 2017) in the released JSON layout.

Layout under the root::

    region_descriptions.json   [{"id": <image id>, "regions": [{region_id, image_id, phrase, x, y, width, height}]}]
    image_data.json            optional: [{"image_id" (or "id"), width, height, url, ...}]
    VG_100K/<id>.jpg, VG_100K_2/<id>.jpg     the images (which folder: from the url, else whichever has it)
    <split>.txt                optional: image ids, one a line

Visual Genome has no official split, so ``split="all"`` reads every image and any other split needs a
``<split>.txt`` id list (a fatal error otherwise, rather than silently giving every image for ``"test"``).

Records: each region description becomes a :class:`~weakground.data.types.Caption` whose single phrase is the
whole description (``first_word_index=0``, ``entity_id`` the region id, no types) with the region's box, as
phrase-grounding papers use it. Image sizes come from ``image_data.json``; without it, from the image file's
header (the pixels are not decoded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weakground.data.parsing import (
    ProblemLog,
    checked_box,
    image_path,
    image_size,
    is_file,
    load_json,
    normalize_text,
    read_split_ids,
    require_dir,
)
from weakground.data.types import Box, Caption, ImageRecord, Phrase, ReadResult
from weakground.errors import WeakgroundError

__all__ = ["read_visual_genome"]

_IMAGE_DIRS = ("VG_100K", "VG_100K_2")


def read_visual_genome(root: str | Path, split: str = "test", strict: bool = False, *,
                       check_images: bool = True) -> ReadResult:
    """Read Visual Genome region descriptions into image records.

    Args:
        root: directory holding ``region_descriptions.json``.
        split: ``"all"``, or a name with a ``<split>.txt`` id list under the root.
        strict: raise on the first problem.
        check_images: require each image file to exist (it is not decoded).

    Returns:
        Records in ``region_descriptions.json`` order, and the problems met.

    Raises:
        WeakgroundError: the root, ``region_descriptions.json`` or the split file is missing or malformed, or
            (``strict``) the first problem.
    """
    root = require_dir(Path(root), "Visual Genome root")
    regions_path = root / "region_descriptions.json"
    entries = load_json(regions_path, "region descriptions file")
    if not isinstance(entries, list):
        raise WeakgroundError(f"{regions_path}: expected a list of images with regions")
    wanted: set[str] | None = None
    if split != "all":
        split_path = root / f"{split}.txt"
        if not split_path.is_file():
            raise WeakgroundError(f"{split_path}: split file not found; Visual Genome has no official split: use "
                                  f"split 'all' or list image ids one a line in {split}.txt")
        wanted = {image_id for image_id, _ in read_split_ids(split_path)}
    sizes = _image_data(root / "image_data.json")
    log = ProblemLog(strict)
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for k, entry in enumerate(entries):
        raw_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
        if raw_id is None or not isinstance(entry.get("regions"), list):
            log.add(regions_path, None, "malformed image entry", f"[{k}]: needs id and a regions list")
            continue
        image_id, regions = str(raw_id), entry["regions"]
        if wanted is not None and image_id not in wanted:
            continue
        if image_id in seen:
            log.add(regions_path, None, "duplicate image id", f"[{k}]: image {image_id}")
            continue
        seen.add(image_id)
        record = _record(root, image_id, sizes.get(image_id), log, check_images)
        if record is None:
            continue
        for r, region in enumerate(regions):
            caption = _caption(region, record, regions_path, f"image {image_id} regions[{r}]", log)
            if caption is not None:
                record.captions.append(caption)
        records.append(record)
    return ReadResult(records, log.problems)


def _image_data(path: Path) -> dict[str, tuple[int, int, str | None]]:
    """image id -> (width, height, relative image path from the url); empty when the file is absent."""
    if not path.is_file():
        return {}
    data = load_json(path, "image data file")
    if not isinstance(data, list):
        raise WeakgroundError(f"{path}: expected a list of images")
    sizes: dict[str, tuple[int, int, str | None]] = {}
    for entry in data:
        # A malformed entry is not an error here: that image falls back to its file header, and any real
        # problem surfaces there.
        try:
            image_id = str(entry.get("image_id", entry.get("id")))
            width, height = int(entry["width"]), int(entry["height"])
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):  # OverflowError: 1e999
            continue
        url = entry.get("url")
        parts = url.rstrip("/").split("/") if isinstance(url, str) else []
        relative = f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 and parts[-2] in _IMAGE_DIRS else None
        sizes[image_id] = (width, height, relative)
    return sizes


def _record(root: Path, image_id: str, size: tuple[int, int, str | None] | None, log: ProblemLog,
            check_images: bool) -> ImageRecord | None:
    try:  # the id becomes a file name: "../../x" or 300 characters must not reach the file system
        candidates = [image_path(root / d, f"{image_id}.jpg") for d in _IMAGE_DIRS]
        if size is not None and size[2] is not None:
            candidates.insert(0, image_path(root, size[2]))
    except ValueError as exc:
        log.add(root, None, "unsafe image file name", f"image {image_id[:80]}: {exc}")
        return None
    path = next((p for p in candidates if is_file(p)), None)
    if path is None and (check_images or size is None):
        log.add(candidates[0], None, "image file missing",
                f"image {image_id}" + ("" if size is not None else "; no size in image_data.json either"))
        return None
    path = path or candidates[0]
    if size is not None:
        width, height = size[0], size[1]
    else:
        header = _header_size(path, log)
        if header is None:
            return None
        width, height = header
    try:
        width, height = image_size(width, height)
    except ValueError as exc:
        log.add(path, None, "invalid image size", f"image {image_id}: {exc}")
        return None
    return ImageRecord(image_id, path, width, height)


def _header_size(path: Path, log: ProblemLog) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError  # only needed without image_data.json

    try:
        with Image.open(path) as image:  # reads the header only; no pixels are decoded
            return image.size
    # DecompressionBombError: a header claiming billions of pixels (it derives from Exception only)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        log.add(path, None, "unreadable image", str(exc))
        return None


def _caption(region: Any, record: ImageRecord, path: Path, where: str, log: ProblemLog) -> Caption | None:
    try:
        phrase = region["phrase"]
        x, y, w, h = (float(region[k]) for k in ("x", "y", "width", "height"))
        if not isinstance(phrase, str):
            raise TypeError
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: an int too big for a float
        log.add(path, None, "malformed region", f"{where}: needs phrase, x, y, width, height")
        return None
    where = f"{where} (region_id {region.get('region_id')})"
    text = normalize_text(phrase)
    if not text:
        log.add(path, None, "empty caption", where)
        return None
    box = checked_box(Box.from_xywh(x, y, w, h), record.width, record.height, log, path, None, where)
    if box is None:
        return None
    region_id = region.get("region_id")
    return Caption(text, [Phrase(text, [box], [], None if region_id is None else str(region_id), 0)])
