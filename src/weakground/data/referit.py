"""ReferIt / RefCLEF referring expressions in the refer toolkit's layout (Kazemzadeh et al., EMNLP 2014).

Layout under the refer ``data/`` root (``PATH`` may also be the ``refclef/`` folder itself)::

    refclef/refs.json            PRIMARY: a JSON export of the refs list (see below)
    refclef/refs(berkeley).p     the toolkit's pickle, used only when refs.json is absent (also refs(unc).p)
    refclef/instances.json       COCO-style {"images": [{id, file_name, width, height}],
                                 "annotations": [{id, image_id, category_id, bbox: [x, y, w, h]}],
                                 "categories": [{id, name}]}
    images/saiapr_tc-12/<file_name>

Each ref is ``{ref_id, image_id, ann_id, split, sentences: [{sent, ...}, ...]}``, as in the pickle.

Why JSON first: unpickling runs whatever the file asks for, so a downloaded pickle is code, not data. Export it
once, on a machine you trust, with the refer toolkit's own Python::

    python -c "import pickle, json; json.dump(pickle.load(open('refs(berkeley).p', 'rb')), open('refs.json', 'w'))"

When only the pickle is there it is still read, but through an unpickler that refuses every global (class,
function), so only plain lists, dicts, strings and numbers can come out of it; anything else is a fatal
:class:`~weakground.errors.WeakgroundError`.

Records: each sentence becomes a :class:`~weakground.data.types.Caption` whose single phrase is the whole
expression (``first_word_index=0``) grounded to the referred object's box, ``entity_id`` the annotation id and
``phrase_types`` its category name (when ``categories`` names it). Images are in order of first reference.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
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
    require_dir,
)
from weakground.data.types import Box, Caption, ImageRecord, Phrase, ReadResult
from weakground.errors import WeakgroundError

__all__ = ["read_referit", "load_refs_pickle"]

_PICKLES = ("refs(berkeley).p", "refs(unc).p")


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build builtin containers and scalars only: every global lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data is accepted")


def load_refs_pickle(path: Path) -> Any:
    """Load the refer toolkit's refs pickle without executing anything it names.

    Python 2 strings in the pickle are decoded as UTF-8.

    Raises:
        WeakgroundError: the file is not a pickle of plain data (or is corrupt).
    """
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="utf-8").load()
    # A corrupt pickle can fail with almost any exception type; each becomes the same one-line user error.
    except Exception as exc:  # noqa: BLE001
        raise WeakgroundError(f"{path}: cannot read refs pickle safely ({exc}); export it to refs.json") from None


def read_referit(root: str | Path, split: str = "test", strict: bool = False, *,
                 check_images: bool = True) -> ReadResult:
    """Read one split of RefCLEF into image records.

    Args:
        root: the refer ``data/`` directory (holding ``refclef/`` and ``images/``) or ``refclef/`` itself.
        split: a ref ``split`` value (``"train"``, ``"val"``, ``"test"``; ``"testA"`` ... for the unc split) or
            ``"all"``.
        strict: raise on the first problem.
        check_images: require each referred image file to exist (it is not decoded).

    Returns:
        Records in order of first reference, and the problems met.

    Raises:
        WeakgroundError: the root, refs or ``instances.json`` is missing or malformed, no ref has ``split``, or
            (``strict``) the first problem.
    """
    root = require_dir(Path(root), "ReferIt root")
    ref_dir, data_root = (root / "refclef", root) if (root / "refclef").is_dir() else (root, root.parent)
    refs, refs_path = _load_refs(ref_dir)
    instances_path = ref_dir / "instances.json"
    instances = _load_instances(instances_path)
    _check_split(refs, split, refs_path)
    log = ProblemLog(strict)
    reading = _Refs(_Instances(instances, instances_path, log), log, refs_path,
                    data_root / "images" / "saiapr_tc-12", check_images)
    for k, ref in enumerate(refs):
        if not isinstance(ref, dict):
            log.add(refs_path, None, "malformed ref entry", f"refs[{k}] is not an object")
        elif split == "all" or ref.get("split") == split:
            reading.add(k, ref)
    return ReadResult(list(reading.records.values()), log.problems)


def _load_refs(ref_dir: Path) -> tuple[list[Any], Path]:
    """The refs list and the file it came from: ``refs.json``, else the first pickle found (read safely)."""
    refs_path = ref_dir / "refs.json"
    if refs_path.is_file():
        refs = load_json(refs_path, "refs file")
    else:
        pickles = [ref_dir / name for name in _PICKLES if (ref_dir / name).is_file()]
        if not pickles:
            raise WeakgroundError(f"{refs_path}: refs file not found (nor {', '.join(_PICKLES)})")
        refs_path = pickles[0]
        refs = load_refs_pickle(refs_path)
    if not isinstance(refs, list):
        raise WeakgroundError(f"{refs_path}: expected a list of refs")
    return refs, refs_path


def _load_instances(path: Path) -> dict[str, Any]:
    instances = load_json(path, "instances file")
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list)
                                                  for k in ("images", "annotations")):
        raise WeakgroundError(f"{path}: not a COCO-style instances file (needs 'images' and 'annotations')")
    return instances


def _check_split(refs: list[Any], split: str, refs_path: Path) -> None:
    # Only string splits can match; a list or dict there (unhashable) is a malformed ref, reported when read.
    splits = {ref.get("split") for ref in refs if isinstance(ref, dict) and isinstance(ref.get("split"), str)}
    if split != "all" and split not in splits:
        known = ", ".join(sorted(str(s) for s in splits)) or "none"
        raise WeakgroundError(f"{refs_path}: no ref has split {split!r}; splits present: {known}")


@dataclass
class _Refs:
    """The records built so far from one split's refs, and what checking the next ref needs."""

    instances: _Instances
    log: ProblemLog
    refs_path: Path
    image_dir: Path
    check_images: bool
    records: dict[str, ImageRecord] = field(default_factory=dict)
    # Image ids whose image entry is unusable: reported once, at the first ref to them; later refs are dropped.
    skipped: set[str] = field(default_factory=set)

    def add(self, k: int, ref: dict[str, Any]) -> None:
        """Add ref ``k``'s sentences to its image's record, or record why it cannot be used."""
        where = f"refs[{k}] (ref_id {ref.get('ref_id')})"
        sentences = ref.get("sentences")
        if "image_id" not in ref or "ann_id" not in ref or not isinstance(sentences, list):
            self._problem("malformed ref entry", f"{where}: needs image_id, ann_id, sentences")
            return
        image_id, ann_id = str(ref["image_id"]), str(ref["ann_id"])
        if image_id in self.skipped or not self._ids_agree(where, image_id, ann_id):
            return
        record = self._record(image_id)
        if record is None:
            return
        box = self.instances.box(ann_id, record)
        if box is None:
            self._problem("referred object has no valid box", f"{where}: ann_id {ann_id}")
            return
        types = self.instances.category(ann_id)
        for s, sentence in enumerate(sentences):
            raw = sentence.get("sent", sentence.get("raw")) if isinstance(sentence, dict) else None
            text = normalize_text(raw) if isinstance(raw, str) else ""
            if not text:
                self._problem("empty caption", f"{where} sentence {s}")
                continue
            record.captions.append(Caption(text, [Phrase(text, [box], types, ann_id, 0)]))

    def _problem(self, reason: str, detail: str) -> None:
        self.log.add(self.refs_path, None, reason, detail)

    def _ids_agree(self, where: str, image_id: str, ann_id: str) -> bool:
        """Whether the ref's image and annotation exist and the annotation is on that image."""
        if image_id not in self.instances.images:
            self._problem("ref for unknown image id", f"{where}: image_id {image_id}")
            return False
        if ann_id not in self.instances.annotations:
            self._problem("unknown annotation id", f"{where}: ann_id {ann_id}")
            return False
        ann_image = self.instances.annotations[ann_id].get("image_id")
        if ann_image is not None and str(ann_image) != image_id:
            self._problem("ref and annotation disagree on the image", f"{where}: ann_id {ann_id}")
            return False
        return True

    def _record(self, image_id: str) -> ImageRecord | None:
        """The image's record, made at its first ref; ``None`` (and skipped from now on) when unusable."""
        record = self.records.get(image_id)
        if record is None:
            record = self.instances.record(image_id, self.image_dir, self.check_images)
            if record is None:
                self.skipped.add(image_id)
                return None
            self.records[image_id] = record
        return record


class _Instances:
    """Index of ``instances.json``; validates an image or a box the first time a ref needs it, and only then,
    so reading one split does not report problems that belong to the others."""

    def __init__(self, data: dict[str, Any], path: Path, log: ProblemLog) -> None:
        self.path, self.log = path, log
        self.images = {str(e.get("id")): (i, e) for i, e in enumerate(data["images"]) if isinstance(e, dict)}
        self.annotations = {str(e.get("id")): e for e in data["annotations"] if isinstance(e, dict)}
        categories = data.get("categories") or []
        if not isinstance(categories, list):  # optional, so a wrong type loses the names, not the dataset
            log.add(path, None, "malformed categories", f"'categories' is a {type(categories).__name__}, not a list")
            categories = []
        self.categories = {str(c.get("id")): str(c.get("name")) for c in categories
                           if isinstance(c, dict) and c.get("name") is not None}
        self._boxes: dict[str, Box | None] = {}

    def record(self, image_id: str, image_dir: Path, check_images: bool) -> ImageRecord | None:
        index, entry = self.images[image_id]
        try:
            file_name = entry["file_name"]
            width, height = image_size(entry["width"], entry["height"])
        except (KeyError, TypeError, ValueError) as exc:
            self.log.add(self.path, None, "malformed image entry",
                         f"images[{index}]: needs file_name, width, height" + (f" ({exc})" if str(exc) else ""))
            return None
        try:
            path = image_path(image_dir, file_name)
        except ValueError as exc:
            self.log.add(self.path, None, "unsafe image file name", f"images[{index}]: {exc}")
            return None
        if check_images and not is_file(path):
            self.log.add(path, None, "image file missing", f"image {image_id}")
            return None
        return ImageRecord(image_id, path, width, height)

    def box(self, ann_id: str, record: ImageRecord) -> Box | None:
        if ann_id not in self._boxes:
            where = f"annotation id {ann_id}"
            try:
                bbox = self.annotations[ann_id]["bbox"]
                if not isinstance(bbox, list):  # a string "1234" would otherwise unpack as four digits
                    raise TypeError
                x, y, w, h = (float(v) for v in bbox)
            except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: an int too big for a float
                self.log.add(self.path, None, "malformed box", f"{where}: needs bbox [x, y, w, h]")
                self._boxes[ann_id] = None
            else:
                self._boxes[ann_id] = checked_box(Box.from_xywh(x, y, w, h), record.width, record.height, self.log,
                                                  self.path, None, where)
        return self._boxes[ann_id]

    def category(self, ann_id: str) -> list[str]:
        name = self.categories.get(str(self.annotations[ann_id].get("category_id")))
        return [name] if name is not None else []
