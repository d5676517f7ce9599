"""Frozen-feature caching: what a frozen encoder computes from a training image or caption is computed once,
kept on disk as memory-mapped ``.npy`` arrays, and fed to the method in its batches instead of being recomputed
every epoch (issue 32).

    method.frozen_feature_spec()          which sides are frozen, and their identity (encoder, weights, levels)
    -> a store per side, under cache_dir()/features/<image|text>/<sha1 of identity + the items' hashes>/:
         index.json (format, identity, the items' sha1s in row order, the arrays' shapes) + <array>.npy
    -> CaptionFeatures.batch(idx, captions): "frozen_image:<level>" maps, "frozen_text:units/mask/sentence"

An image item is keyed by the sha1 of its uint8 pixels and shape, a caption by the sha1 of its text, so the
same images at another size, another encoder or other weights never share a store. A store is written into a
temporary folder and renamed into place, so a killed run leaves no half store; one that does not open (damaged,
truncated, another layout) is rebuilt with a one-line note. An unwritable cache only costs the caching.

The cache is exact only where the features do not change between epochs: no augmentation reaches the caption
grounding batches (caption_grounding.caption_batches), and an encoder that trains is never cached (its spec is
empty). docs/feature_cache.md has the measurements and what is bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from weakground.cache import cache_dir
from weakground.methods.caption_parts import IMAGE_FEATURES, TEXT_FEATURES

FORMAT = 1
IMAGE_CHUNK, TEXT_CHUNK = 64, 256  # items per encoder pass while filling


def image_item_key(image: np.ndarray) -> str:
    """sha1 of an image's shape, dtype and pixel bytes."""
    digest = hashlib.sha1(f"{image.shape}:{image.dtype}\n".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def text_item_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class StoreError(Exception):
    """A store on disk that cannot be used as it is (it is rebuilt)."""


@dataclass
class FeatureStore:
    """Per-item features: ``arrays[name][row]`` for fixed-shape arrays; a ragged array ``units`` (texts) holds
    item r's ``lengths[r]`` rows from ``offsets[r]``.

    Attributes:
        directory: where it lives.
        rows: item key -> row.
        arrays: name -> read-only memory map (``units`` included when ragged).
        offsets: ``[N + 1]`` starts of each item's ``units`` rows, or None when nothing is ragged.
    """

    directory: Path
    rows: dict[str, int]
    arrays: dict[str, np.ndarray]
    offsets: np.ndarray | None = None

    def fixed(self, name: str, rows: np.ndarray) -> torch.Tensor:
        """``[len(rows), ...]`` of a fixed-shape array (a copy: the memory map stays read-only)."""
        return torch.from_numpy(np.ascontiguousarray(self.arrays[name][rows]))

    def padded_units(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``units [n, W, E]`` zero-padded to ``W = max(1, longest)`` and ``mask [n, W]``, as the encoders pad."""
        assert self.offsets is not None
        lengths = self.arrays["lengths"][rows]
        units = self.arrays["units"]
        out = np.zeros((len(rows), max(1, int(lengths.max(initial=0))), units.shape[1]), dtype=units.dtype)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            out[i, :n] = units[self.offsets[row]:self.offsets[row] + n]
        mask = np.arange(out.shape[1])[None] < lengths[:, None]
        return torch.from_numpy(out), torch.from_numpy(mask)


def store_directory(kind: str, identity: str, keys: list[str]) -> Path:
    """``cache_dir()/features/<kind>/<sha1(identity, sorted keys)>``: one store per identity and item set."""
    digest = hashlib.sha1(f"format {FORMAT}\n{identity}\n".encode())
    digest.update("\n".join(keys).encode())
    return cache_dir() / "features" / kind / digest.hexdigest()[:24]


def open_store(directory: Path, identity: str, keys: list[str]) -> FeatureStore:
    """Open a store written by :func:`build_store`, checking it against what the caller expects.

    Raises:
        StoreError: missing, unreadable, written for other items or another identity, or arrays whose shapes
            disagree with the index (a truncated ``.npy`` does not open as a memory map).
    """
    try:
        index = json.loads((directory / "index.json").read_text())
        if index.get("format") != FORMAT or index.get("identity") != identity or index.get("keys") != keys:
            raise StoreError("written for other items, another encoder or another format")
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                  for name in index["arrays"]}
    except StoreError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from None
    for name, meta in index["arrays"].items():
        if list(arrays[name].shape) != meta["shape"] or str(arrays[name].dtype) != meta["dtype"]:
            raise StoreError(f"{name}.npy is {arrays[name].shape} {arrays[name].dtype}, the index says "
                             f"{meta['shape']} {meta['dtype']}")
    offsets = None
    if "units" in arrays:
        offsets = np.concatenate([[0], np.cumsum(arrays["lengths"], dtype=np.int64)])
        if offsets[-1] != arrays["units"].shape[0]:
            raise StoreError("the text lengths do not add up to the stored units")
    return FeatureStore(directory, {k: i for i, k in enumerate(keys)}, arrays, offsets)


def _write_chunks(tmp: Path, n_items: int, chunks: Iterable[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write the computed chunks (rows in order) into ``tmp``: fixed arrays straight into ``.npy`` memory maps,
    the ragged ``units`` gathered and saved once its total length is known. Returns the arrays' metadata."""
    maps: dict[str, np.ndarray] = {}
    units: list[np.ndarray] = []
    start = 0
    for chunk in chunks:
        n = len(chunk["lengths"]) if "lengths" in chunk else len(next(iter(chunk.values())))
        for name, values in chunk.items():
            if name == "units":
                units += [values[i, :length] for i, length in enumerate(chunk["lengths"])]
                continue
            if name not in maps:
                maps[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=values.dtype,
                                                       shape=(n_items, *values.shape[1:]))
            maps[name][start:start + n] = values
        start += n
    meta = {name: {"shape": list(m.shape), "dtype": str(m.dtype)} for name, m in maps.items()}
    for m in maps.values():
        m.flush()
    if units:
        table = np.concatenate(units)
        np.save(tmp / "units.npy", table)
        meta["units"] = {"shape": list(table.shape), "dtype": str(table.dtype)}
    return meta


def build_store(directory: Path, identity: str, keys: list[str], chunks: Iterable[dict[str, np.ndarray]]
                ) -> FeatureStore:
    """Write a store atomically (a temporary folder renamed into place) and open it. If another process put
    one there first, that one is used."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = _write_chunks(tmp, len(keys), chunks)
        index = {"format": FORMAT, "identity": identity, "keys": keys, "arrays": meta}
        (tmp / "index.json").write_text(json.dumps(index))
        shutil.rmtree(directory, ignore_errors=True)  # a damaged store of the same key
        try:
            os.replace(tmp, directory)
        except OSError:
            if not (directory / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_store(directory, identity, keys)


def cached_store(kind: str, identity: str, keys: list[str],
                 compute: Callable[[list[int]], dict[str, np.ndarray]], chunk: int) -> FeatureStore | None:
    """The store of ``keys`` (sorted, unique) under ``identity``: opened when it is there and sound, else
    computed chunk by chunk (``compute(positions) -> arrays``) and written. None, with a note, when the cache
    directory cannot be written: training then runs its encoders as usual."""
    directory = store_directory(kind, identity, keys)
    if directory.is_dir():
        try:
            return open_store(directory, identity, keys)
        except StoreError as exc:
            print(f"note: feature cache {directory} is unusable ({exc}); rebuilding it")
    chunks = (compute(list(range(i, min(i + chunk, len(keys))))) for i in range(0, len(keys), chunk))
    try:
        return build_store(directory, identity, keys, chunks)
    except (OSError, StoreError) as exc:
        print(f"note: cannot write the feature cache under {directory.parent} ({exc}); frozen encoders run "
              f"every step")
        return None


def _numpy(features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
            for name, t in features.items()}


class CaptionFeatures:
    """The frozen features of a caption training set (:class:`~weakground.engine.tasks.caption_grounding.
    CaptionTrainSet`), computed or opened on the first batch, when the model is already on its training device.

    Args:
        model: a method with ``frozen_feature_spec``, ``frozen_image_features`` and ``frozen_text_features``.
        images: ``[N, S, S, 3]`` uint8 training images.
        captions: per image, its caption texts.
        amp: the training step runs under bfloat16 autocast (CUDA), so the features are computed under it too.
    """

    def __init__(self, model: Any, images: np.ndarray, captions: list[list[str]], amp: bool) -> None:
        self.model, self.images, self.amp = model, images, amp
        spec = model.frozen_feature_spec()
        self.image_identity, self.text_identity = spec.image, spec.text
        self.texts = sorted({t for texts in captions for t in texts}, key=lambda t: (len(t), text_item_key(t)))
        self.image_store: FeatureStore | None = None
        self.text_store: FeatureStore | None = None
        self.image_rows = np.zeros(0, dtype=np.int64)
        self.filled = False

    @property
    def active(self) -> bool:
        return bool(self.image_identity or self.text_identity)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _context(self) -> Any:
        device = self._device()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda")

    def _identity(self, side: str) -> str:
        # Rounding depends on the device, its autocast and the torch build, so those are part of the key too.
        return f"{side}|device={self._device().type}|amp={self.amp}|torch={torch.__version__}"

    def _fill_images(self) -> None:
        keys_per_image = [image_item_key(image) for image in self.images]
        first: dict[str, int] = {}
        for i, key in enumerate(keys_per_image):
            first.setdefault(key, i)
        keys = sorted(first)
        device = self._device()

        def compute(positions: list[int]) -> dict[str, np.ndarray]:
            chosen = self.images[[first[keys[p]] for p in positions]]
            images = torch.from_numpy(chosen).permute(0, 3, 1, 2).float().div_(255.0).to(device)
            with self._context():
                return _numpy(self.model.frozen_image_features(images))

        self.image_store = cached_store("image", self._identity(self.image_identity), keys, compute, IMAGE_CHUNK)
        if self.image_store is not None:
            self.image_rows = np.array([self.image_store.rows[k] for k in keys_per_image], dtype=np.int64)

    def _fill_texts(self) -> None:
        keys = [text_item_key(t) for t in self.texts]

        def compute(positions: list[int]) -> dict[str, np.ndarray]:
            with self._context():
                return _numpy(self.model.frozen_text_features([self.texts[p] for p in positions]))

        self.text_store = cached_store("text", self._identity(self.text_identity), keys, compute, TEXT_CHUNK)
        self.text_rows = {t: i for i, t in enumerate(self.texts)}

    def fill(self) -> None:
        """Open or compute both sides' stores (once)."""
        if self.filled:
            return
        self.filled = True
        if self.image_identity:
            self._fill_images()
        if self.text_identity:
            self._fill_texts()

    def batch(self, idx: np.ndarray, captions: list[str]) -> dict[str, torch.Tensor]:
        """The precomputed features of images ``idx`` and of ``captions`` (one per image), as batch entries."""
        self.fill()
        out: dict[str, torch.Tensor] = {}
        if self.image_store is not None:
            rows = self.image_rows[idx]
            out.update({IMAGE_FEATURES + name: self.image_store.fixed(name, rows) for name in self.image_store.arrays})
        if self.text_store is not None:
            rows = np.array([self.text_rows[c] for c in captions], dtype=np.int64)
            units, mask = self.text_store.padded_units(rows)
            out.update({TEXT_FEATURES + "units": units, TEXT_FEATURES + "mask": mask})
            if "sentence" in self.text_store.arrays:
                out[TEXT_FEATURES + "sentence"] = self.text_store.fixed("sentence", rows)
        return out


def caption_features(model: Any, images: np.ndarray, captions: list[list[str]], enabled: bool, amp: bool
                     ) -> CaptionFeatures | None:
    """A :class:`CaptionFeatures` when ``enabled`` (``train.cache_features``) and the model has a frozen side;
    else None (the batches then carry images and captions only)."""
    if not enabled or not hasattr(model, "frozen_feature_spec"):
        return None
    features = CaptionFeatures(model, images, captions, amp)
    return features if features.active else None
