"""The dataset registry: every dataset the toolkit trains or evaluates on, one :class:`DatasetSource` each.

``data.name`` in a config, and ``FORMAT`` in a ``FORMAT:PATH`` spec, are looked up in
:data:`weakground.registry.DATASETS`, which this module fills (importing it registers every source):

======================  ====================  ==============================================================
name                    task                  how the data is had
======================  ====================  ==============================================================
``multimnist``          ``label_grounding``   ``build_splits``: composed in memory from real MNIST digits
``scenes``              ``caption_grounding`` ``materialize``: generated once into the cache, then read as
                                              ``flickr30k_entities``
``flickr30k_entities``  ``caption_grounding`` ``read``: the root holding ``Sentences/``
``coco``                ``caption_grounding`` ``read``: the root holding ``annotations/``
``referit``             ``caption_grounding`` ``read``: the refer ``data/`` root (or ``refclef/``)
``visual_genome``       ``caption_grounding`` ``read``: the root holding ``region_descriptions.json``
======================  ====================  ==============================================================

The task names the training task that consumes the dataset (see :mod:`weakground.engine.tasks`), so no caller
branches on a dataset's name. Each source also lists the :class:`~weakground.config.DataConfig` fields a run on
it reads (:func:`unused_data_settings` warns about the others). Reader and generator modules are imported only
when a source is used, so looking a name up stays cheap and never imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from weakground.config import DataConfig
from weakground.data.types import ReadResult
from weakground.errors import ConfigError
from weakground.registry import DATASETS

__all__ = [
    "LABEL_GROUNDING",
    "CAPTION_GROUNDING",
    "DatasetSource",
    "dataset_source",
    "dataset_sources",
    "disk_formats",
    "dataset_spec",
    "scenes_root",
    "extra_test_splits",
    "unused_data_settings",
]

LABEL_GROUNDING = "label_grounding"
CAPTION_GROUNDING = "caption_grounding"
_SCENES_LAYOUT_VERSION = 1  # bump when the generator's output changes, so stale caches are not reused

SplitBuilder = Callable[[DataConfig, tuple[str, ...], bool], dict[str, Any]]
Reader = Callable[..., ReadResult]  # (root, split="test", strict=False, *, check_images=True)
Materializer = Callable[[DataConfig, bool], Path]


@dataclass(frozen=True)
class DatasetSource:
    """One registered dataset: what it is, which task trains on it, which settings it reads, how to get it.

    Exactly one of ``build_splits``, ``read`` and ``materialize`` is set.

    Attributes:
        name: the registry name (``data.name``; for a disk format also ``FORMAT`` in ``FORMAT:PATH``).
        task: the training task that consumes it (``"label_grounding"`` or ``"caption_grounding"``).
        description: one line for listings and help.
        fields: every :class:`~weakground.config.DataConfig` field a run on this dataset reads, the
            source's own and those of the task that consumes it (``name`` is always read and not listed).
        build_splits: in-memory datasets: ``(data, splits, progress) -> {split: set}``.
        read: disk formats: ``(root, split="test", strict=False, *, check_images=True) -> ReadResult``.
        materialize: generated datasets: ``(data, progress) -> root``, written once and then read as ``read_as``.
        read_as: the disk format a materialized root is read with.
        class_names: label datasets: the labels, in class-index order.
        extra_test_splits: ``(split, DataConfig count field)`` pairs: the split is scored after ``test`` when
            the count is positive.
    """

    name: str
    task: str
    description: str
    fields: tuple[str, ...]
    build_splits: SplitBuilder | None = None
    read: Reader | None = None
    materialize: Materializer | None = None
    read_as: str = ""
    class_names: tuple[str, ...] = ()
    extra_test_splits: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Checked once, at registration: a typo in a table below must fail at import, not silently never warn.
        ways = [w for w in (self.build_splits, self.read, self.materialize) if w is not None]
        if len(ways) != 1:
            raise ValueError(f"dataset {self.name!r}: set exactly one of build_splits, read, materialize")
        if (self.materialize is not None) != bool(self.read_as):
            raise ValueError(f"dataset {self.name!r}: read_as goes with materialize, and only with it")
        known = {f.name for f in dataclasses.fields(DataConfig)}
        counts = [count for _, count in self.extra_test_splits]
        unknown = sorted(set(self.fields).union(counts) - known)
        if unknown:
            raise ValueError(f"dataset {self.name!r}: not DataConfig fields: {', '.join(unknown)}")


def _register(source: DatasetSource) -> DatasetSource:
    return DATASETS.register(source.name)(source)


# --------------------------------------------------------------------------------------------- lookups


def dataset_source(name: str) -> DatasetSource:
    """The registered dataset ``name``.

    Raises:
        WeakgroundError: an unknown name (one line listing the known ones).
    """
    return DATASETS.get(name)


def dataset_sources(task: str | None = None) -> list[DatasetSource]:
    """Every registered dataset (only those ``task`` consumes, when given), sorted by name."""
    sources = [DATASETS.get(name) for name in DATASETS.names()]
    return [s for s in sources if task is None or s.task == task]


def disk_formats() -> list[str]:
    """The names usable as ``FORMAT`` in a ``FORMAT:PATH`` spec (sources with a reader), sorted."""
    return [s.name for s in dataset_sources() if s.read is not None]


# ------------------------------------------------------------------------------------ caption datasets


def dataset_spec(data: DataConfig, progress: bool = False) -> str:
    """``FORMAT:PATH`` for the configured caption dataset (a generated one is materialized first).

    Raises:
        ConfigError: a disk format without ``data.path``, or a name that is no caption dataset.
    """
    source = DATASETS.get(data.name) if data.name in DATASETS else None
    if source is None or source.task != CAPTION_GROUNDING:
        generated = " or ".join(repr(s.name) for s in dataset_sources(CAPTION_GROUNDING) if s.materialize)
        raise ConfigError(f"data.name {data.name!r}: caption methods train on {generated} or a dataset format "
                          f"({', '.join(disk_formats())}) with data.path")
    if source.materialize is not None:
        return f"{source.read_as}:{source.materialize(data, progress)}"
    if not data.path:
        raise ConfigError(f"data.name {data.name!r} reads a dataset from disk: set data.path to its root")
    return f"{data.name}:{data.path}"


def scenes_root(data: DataConfig, progress: bool = False) -> Path:
    """The cached Flickr30K-layout folder of the scenes ``data`` describes, generated on first use.

    The folder name is a hash of the spec and split sizes. It is written under a temporary name and renamed
    when complete, so an interrupted generation is never mistaken for a dataset.
    """
    from weakground.cache import cache_dir
    from weakground.data.scenes import SceneSpec, write_scenes

    spec = SceneSpec(seed=data.seed)
    counts = (data.n_train, data.n_val, data.n_test, data.n_test_unseen)
    key = hashlib.sha1(json.dumps([dataclasses.asdict(spec), counts, _SCENES_LAYOUT_VERSION]).encode()
                       ).hexdigest()[:12]
    root = cache_dir() / "scenes" / f"scenes-{key}"
    if (root / "Sentences").is_dir():
        return root
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    if progress:
        print(f"generating {sum(counts):,} synthetic scenes into {root} (once)")
    write_scenes(tmp, spec, *counts, coco=False)
    try:
        tmp.rename(root)
    except OSError:  # another process finished the same set first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def extra_test_splits(data: DataConfig) -> list[str]:
    """The splits scored after ``test`` for ``data`` (``["test_unseen"]`` for scenes with ``n_test_unseen > 0``).

    Raises:
        WeakgroundError: an unknown ``data.name``.
    """
    source = dataset_source(data.name)
    return [split for split, count in source.extra_test_splits if getattr(data, count) > 0]


def unused_data_settings(data: DataConfig) -> list[str]:
    """The ``data`` fields set away from their defaults that the chosen dataset never reads, in field order.

    E.g. ``data.grid`` with ``data.name: scenes``: the setting is legal but has no effect, which the user
    should hear about.

    Raises:
        WeakgroundError: an unknown ``data.name``.
    """
    read = set(dataset_source(data.name).fields) | {"name"}
    defaults = DataConfig()
    return [f.name for f in dataclasses.fields(DataConfig)
            if f.name not in read and getattr(data, f.name) != getattr(defaults, f.name)]


# ----------------------------------------------------------------------------- builders and readers
# Each imports its module on first use, so that looking a dataset up (or reading COCO) imports no other reader.


def _multimnist_splits(config: DataConfig, splits: tuple[str, ...] = ("train", "val", "test"),
                       progress: bool = False) -> dict[str, Any]:
    """Train and val are composed from the train digit pool (different seeds), test from the disjoint test pool."""
    from weakground.data.multimnist import MultiMnistSpec, make_multimnist

    spec = MultiMnistSpec(
        layout=config.layout, grid=config.grid, cell=config.cell, jitter=config.jitter, canvas=config.canvas,
        min_digits=config.min_digits, max_digits=config.max_digits, max_overlap=config.max_overlap,
        noise_std=config.noise_std,
    )
    plan = {"train": ("train", config.n_train, config.seed), "val": ("train", config.n_val, config.seed + 1),
            "test": ("test", config.n_test, config.seed + 2)}
    return {s: make_multimnist(spec, plan[s][1], pool=plan[s][0], seed=plan[s][2], progress=progress) for s in splits}


def _lazy_reader(module: str, function: str) -> Reader:
    """A disk format's reader, imported on its first call: most runs read one format or none."""

    def read(root: str | Path, split: str = "test", strict: bool = False, *, check_images: bool = True) -> ReadResult:
        reader = getattr(importlib.import_module(f"weakground.data.{module}"), function)
        return reader(root, split=split, strict=strict, check_images=check_images)

    return read


# ---------------------------------------------------------------------------------------- the sources
# fields: read off the code that consumes each setting. Label grounding: the multi-MNIST spec and split sizes
# (_multimnist_splits) and noise_std again for backbone pretraining. Caption grounding, every source: images
# resized to image_size for training and, with eval_resize, for inference; validation scores the first n_val
# images of val. Scenes add what scenes_root hashes; disk formats add path.

_CAPTION_TASK_FIELDS = ("image_size", "eval_resize", "n_val")

_register(DatasetSource(
    "multimnist", LABEL_GROUNDING,
    "scenes of several real MNIST digits composed in memory; image-level labels, ink boxes for evaluation",
    fields=("layout", "grid", "cell", "jitter", "canvas", "min_digits", "max_digits", "max_overlap", "noise_std",
            "n_train", "n_val", "n_test", "seed"),
    build_splits=_multimnist_splits, class_names=tuple(str(d) for d in range(10))))
_register(DatasetSource(
    "scenes", CAPTION_GROUNDING,
    "synthetic captioned scenes of shapes and digits, generated once into the cache (Flickr30K Entities layout)",
    fields=("seed", "n_train", "n_test", "n_test_unseen", *_CAPTION_TASK_FIELDS),
    materialize=scenes_root, read_as="flickr30k_entities", extra_test_splits=(("test_unseen", "n_test_unseen"),)))
DISK_FORMATS = {  # name -> what PATH holds; each is read by weakground.data.<name>.read_<name>
    "flickr30k_entities": "Flickr30K Entities captions and phrase boxes; PATH holds Sentences/",
    "coco": "COCO captions and instance boxes; PATH holds annotations/",
    "referit": "ReferIt (RefCLEF) referring expressions; PATH is the refer data/ root or refclef/",
    "visual_genome": "Visual Genome region descriptions; PATH holds region_descriptions.json",
}
for _name, _description in DISK_FORMATS.items():
    _register(DatasetSource(_name, CAPTION_GROUNDING, _description, fields=("path", *_CAPTION_TASK_FIELDS),
                            read=_lazy_reader(_name, f"read_{_name}")))
