"""Multi-MNIST: scenes of several real handwritten digits, with a tight ink box per digit.

Each scene is composed from digits of one pool of :func:`weakground.data.digits.digit_pools` ("train" or
"test"), so test scenes never reuse a training digit. Digits are pasted by pixel-wise maximum, which keeps
overlapping strokes visible, and Gaussian white noise is added afterwards. Two layouts:

* ``"grid"``: a ``grid x grid`` array of cells of ``cell`` px, one digit per cell (optionally jittered);
* ``"free"``: 1..N digits at random positions on a ``canvas`` px square, with the IoU between any two digits'
  ink boxes capped by ``max_overlap``.

Boxes are ``(x1, y1, x2, y2)`` pixel edges with exclusive ends (the tight box of each digit's ink, not its
28x28 patch). Only the image-level labels are meant for training; the boxes are ground truth for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weakground.data.digits import (
    DIGIT_SIZE,
    N_CLASSES,
    POOLS,
    check_pool,
    digit_pools,
    ink_boxes,
    load_digits_5k,
)
from weakground.data.validation import field_error, is_int, is_number
from weakground.errors import WeakgroundError

LAYOUTS = ("grid", "free")
# Free layout: candidate positions tried per digit before the digit is dropped.
MAX_PLACEMENT_TRIES = 100
# Images composed (and noised) per block: bounds the float32 scratch memory and paces the progress bar.
_BLOCK = 2048


@dataclass
class MultiMnistSpec:
    """How multi-MNIST scenes are laid out (all sizes in pixels).

    Attributes:
        layout: "grid" (``grid x grid`` digits, one per cell) or "free" (``min_digits..max_digits`` digits at
            random positions on a ``canvas``).
        grid: grid layout: cells per side (2 -> 4 digits, 3 -> 9).
        cell: grid layout: cell side, at least 28; the image side is ``grid * cell``.
        jitter: grid layout: max random shift of a digit from its cell centre, per axis; the digit's patch is
            always kept fully inside the image.
        canvas: free layout: image side, at least 28.
        min_digits: free layout: fewest digits drawn per image (at least 1).
        max_digits: free layout: most digits drawn per image.
        max_overlap: free layout: max IoU between the ink boxes of any two digits (0 = boxes never overlap).
            A digit that cannot be placed in ``MAX_PLACEMENT_TRIES`` tries is dropped, so an image can hold
            fewer than ``min_digits`` digits, but always at least one.
        noise_std: std of Gaussian white noise on [0, 1] intensities, added after composition, then clipped.
        test_fraction: share of each class's digits reserved for the test pool.
        pool_seed: seed of the train/test digit-pool split.
    """

    layout: str = "grid"
    grid: int = 2
    cell: int = 28
    jitter: int = 0
    canvas: int = 64
    min_digits: int = 1
    max_digits: int = 4
    max_overlap: float = 0.2
    noise_std: float = 0.1
    test_fraction: float = 0.2
    pool_seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def image_size(self) -> int:
        """Side of the square images this spec produces."""
        return self.grid * self.cell if self.layout == "grid" else self.canvas

    def validate(self) -> None:
        """Check every field.

        Raises:
            WeakgroundError: naming the first invalid field, its value and what is allowed.
        """

        def fail(name: str, expected: str) -> None:
            raise field_error(self, name, expected)

        if self.layout not in LAYOUTS:
            fail("layout", f"one of {', '.join(map(repr, LAYOUTS))}")
        for name, low in (("grid", 1), ("cell", DIGIT_SIZE), ("jitter", 0), ("canvas", DIGIT_SIZE),
                          ("min_digits", 1), ("max_digits", 1), ("pool_seed", 0)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                fail(name, f"an integer >= {low}")
        if self.max_digits < self.min_digits:
            fail("max_digits", f">= min_digits ({self.min_digits})")
        if not is_number(self.max_overlap) or not 0.0 <= self.max_overlap <= 1.0:
            fail("max_overlap", "a number in [0, 1]")
        if not is_number(self.noise_std) or self.noise_std < 0:
            fail("noise_std", "a number >= 0")
        if not is_number(self.test_fraction) or not 0.0 < self.test_fraction < 1.0:
            fail("test_fraction", "a number strictly between 0 and 1")


@dataclass
class MultiMnistSet:
    """A set of multi-MNIST scenes with their ground truth.

    Attributes:
        images: uint8 ``(N, H, W)`` with H = W = ``image_size``; noise already applied and quantised.
        boxes: per image, float32 ``(K_i, 4)`` ink boxes ``(x1, y1, x2, y2)``: 0-based pixel edges, x2/y2
            exclusive.
        labels: per image, int64 ``(K_i,)`` digit classes, aligned with ``boxes`` (classes may repeat).
        spec: the layout the scenes were made with.
        pool: the digit pool ("train" or "test") the digits were drawn from.
        source_index: per image, int64 ``(K_i,)`` index of each digit in :func:`load_digits_5k`'s arrays
            (provenance: lets one check that train and test scenes share no digit). Empty when unknown.
        patch_boxes: per image, float32 ``(K_i, 4)``: the 28x28 patch each digit was pasted into, aligned with
            ``boxes`` (in the grid layout without jitter, the digit's grid cell). Fang et al. does not say which box
            it scores against; ``eval.ground_truth: patch`` scores against these. Empty when unknown.
    """

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    spec: MultiMnistSpec
    pool: str
    source_index: list[np.ndarray] = field(default_factory=list)
    patch_boxes: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.boxes) != len(self.images) or len(self.labels) != len(self.images):
            raise ValueError(
                f"MultiMnistSet: {len(self.images)} images but {len(self.boxes)} box and {len(self.labels)} label lists"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.images.shape[1])

    def present(self, i: int) -> np.ndarray:
        """Sorted unique classes in image ``i``: int64 ``(P,)``."""
        return np.unique(self.labels[i]).astype(np.int64)

    def absent(self, i: int) -> np.ndarray:
        """Sorted classes 0..9 that image ``i`` does not contain: int64 ``(10 - P,)``."""
        return np.setdiff1d(np.arange(N_CLASSES, dtype=np.int64), self.labels[i]).astype(np.int64)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of each box in ``box`` ``(C, 4)`` with each of ``others`` ``(M, 4)`` -> ``(C, M)``."""
    ix = np.minimum(box[:, None, 2], others[None, :, 2]) - np.maximum(box[:, None, 0], others[None, :, 0])
    iy = np.minimum(box[:, None, 3], others[None, :, 3]) - np.maximum(box[:, None, 1], others[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _grid_layout(spec: MultiMnistSpec, n: int, pool: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits and paste positions for ``n`` grid scenes: ``(src, xs, ys, valid)``, each ``(n, grid*grid)``."""
    k = spec.grid * spec.grid
    src = pool[rng.integers(0, len(pool), size=(n, k))]
    slot = np.arange(k)
    # Centre the 28x28 patch in its cell; jitter then moves it, clipped so the patch stays inside the image.
    xs = np.broadcast_to((slot % spec.grid) * spec.cell + (spec.cell - DIGIT_SIZE) // 2, (n, k)).copy()
    ys = np.broadcast_to((slot // spec.grid) * spec.cell + (spec.cell - DIGIT_SIZE) // 2, (n, k)).copy()
    if spec.jitter > 0:
        shift = rng.integers(-spec.jitter, spec.jitter + 1, size=(n, k, 2))
        limit = spec.image_size - DIGIT_SIZE
        xs = np.clip(xs + shift[..., 0], 0, limit)
        ys = np.clip(ys + shift[..., 1], 0, limit)
    return src, xs, ys, np.ones((n, k), dtype=bool)


def _free_layout(spec: MultiMnistSpec, n: int, pool: np.ndarray, digit_boxes: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits and paste positions for ``n`` free scenes, padded to ``max_digits``: ``(src, xs, ys, valid)``."""
    k_max = spec.max_digits
    src = np.zeros((n, k_max), dtype=np.int64)
    xs = np.zeros((n, k_max), dtype=np.int64)
    ys = np.zeros((n, k_max), dtype=np.int64)
    valid = np.zeros((n, k_max), dtype=bool)
    high = spec.canvas - DIGIT_SIZE + 1  # exclusive bound of the patch's top-left corner
    for i in range(n):
        k = int(rng.integers(spec.min_digits, spec.max_digits + 1))
        chosen = pool[rng.integers(0, len(pool), size=k)]
        placed = np.empty((0, 4), dtype=np.int64)
        for d in chosen:
            # Draw all candidate positions at once; the first one within the overlap cap wins.
            tries = 1 if len(placed) == 0 else MAX_PLACEMENT_TRIES
            pos = rng.integers(0, high, size=(tries, 2))
            cand = digit_boxes[d][None, :] + np.concatenate([pos, pos], axis=1)
            if len(placed):
                ok = (_iou(cand, placed) <= spec.max_overlap).all(axis=1)
                if not ok.any():
                    continue  # no room for this digit: drop it (the image keeps its earlier digits)
                pos, cand = pos[ok.argmax()], cand[ok.argmax()]
            else:
                pos, cand = pos[0], cand[0]
            j = len(placed)
            src[i, j], xs[i, j], ys[i, j], valid[i, j] = d, pos[0], pos[1], True
            placed = np.concatenate([placed, cand[None]], axis=0)
    return src, xs, ys, valid


def _paste(canvas: np.ndarray, digits: np.ndarray, src: np.ndarray, xs: np.ndarray, ys: np.ndarray,
           valid: np.ndarray) -> None:
    """Max-composite digits into ``canvas`` ``(n, S, S)`` in place, one slot of every image at a time.

    Within one slot each image receives at most one digit, so the fancy-indexed read-max-write below never
    writes the same pixel twice in one step; successive slots then see each other's strokes.
    """
    offs = np.arange(DIGIT_SIZE)
    for j in range(src.shape[1]):
        rows = np.flatnonzero(valid[:, j])
        if len(rows) == 0:
            continue
        yy = (ys[rows, j][:, None] + offs)[:, :, None]  # (m, 28, 1)
        xx = (xs[rows, j][:, None] + offs)[:, None, :]  # (m, 1, 28)
        region = (rows[:, None, None], yy, xx)
        canvas[region] = np.maximum(canvas[region], digits[src[rows, j]])


def _add_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> None:
    """Add N(0, std) noise to uint8 ``images`` ``(n, H, W)`` seen as [0, 1], clip and requantise in place."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    x += np.float32(std) * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    x *= 255.0
    np.rint(x, out=x)
    images[...] = x.astype(np.uint8)


def make_multimnist(spec: MultiMnistSpec, n_images: int, pool: str = "train", seed: int = 0,
                    progress: bool = False) -> MultiMnistSet:
    """Compose ``n_images`` multi-MNIST scenes from one digit pool.

    Digits are drawn uniformly with replacement from the pool (a class can repeat within an image). The result
    is a pure function of ``(spec, n_images, pool, seed)``.

    Args:
        spec: layout, noise and pool-split settings.
        n_images: number of scenes (>= 0).
        pool: "train" or "test" digit pool (disjoint for the same ``spec.test_fraction``/``spec.pool_seed``).
        seed: seed of the layouts and the noise.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`MultiMnistSet` with uint8 images ``(n_images, S, S)``, ``S = spec.image_size``.

    Raises:
        WeakgroundError: an invalid spec field, unknown pool, bad ``n_images``/``seed``, or missing digit data.
    """
    _check_arguments(spec, n_images, pool, seed)
    digits, classes = load_digits_5k()
    digit_boxes = ink_boxes(digits)  # (5000, 4) int64, in patch coordinates
    index = digit_pools(classes, spec.test_fraction, spec.pool_seed)[pool]
    if len(index) == 0:
        raise WeakgroundError(f"digit pool {pool!r} is empty with test_fraction={spec.test_fraction}")

    # Separate streams for layout and noise; the pool is mixed in so train and test scenes with the same seed
    # are not laid out identically.
    layout_rng, noise_rng = (np.random.default_rng(s)
                             for s in np.random.SeedSequence([int(seed), POOLS.index(pool)]).spawn(2))
    size = spec.image_size
    images = np.zeros((n_images, size, size), dtype=np.uint8)
    truth = _GroundTruth()

    from tqdm.auto import tqdm

    with tqdm(total=n_images, disable=not progress, desc=f"multimnist {pool}", unit="img", leave=False) as bar:
        for start in range(0, n_images, _BLOCK):
            block = images[start:min(n_images, start + _BLOCK)]
            truth.add(classes, *_compose(block, spec, index, digits, digit_boxes, layout_rng))
            if spec.noise_std > 0:
                _add_noise(block, float(spec.noise_std), noise_rng)
            bar.update(len(block))

    return MultiMnistSet(images=images, boxes=truth.boxes, labels=truth.labels, spec=spec, pool=pool,
                         source_index=truth.sources, patch_boxes=truth.patches)


def _check_arguments(spec: MultiMnistSpec, n_images: int, pool: str, seed: int) -> None:
    if not isinstance(spec, MultiMnistSpec):
        raise TypeError(f"spec must be a MultiMnistSpec, got {type(spec).__name__}")
    spec.validate()  # again: the fields may have been changed after construction
    check_pool(pool)
    for name, value in (("n_images", n_images), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise WeakgroundError(f"make_multimnist: {name} must be a non-negative integer, got {value!r}")


@dataclass
class _GroundTruth:
    """Per-image ground truth, appended block by block in image order (see :class:`MultiMnistSet`)."""

    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    patches: list[np.ndarray] = field(default_factory=list)

    def add(self, classes: np.ndarray, src: np.ndarray, valid: np.ndarray, shifted: np.ndarray,
            patch: np.ndarray) -> None:
        """Append one block's images: digit indices ``src`` and ``valid`` ``(n, K)``, boxes ``(n, K, 4)``."""
        for i in range(len(src)):
            keep = valid[i]
            self.boxes.append(shifted[i, keep])
            self.patches.append(patch[i, keep])
            self.labels.append(classes[src[i, keep]].astype(np.int64))
            self.sources.append(src[i, keep].astype(np.int64))


def _compose(block: np.ndarray, spec: MultiMnistSpec, pool: np.ndarray, digits: np.ndarray,
             digit_boxes: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lay out and paste the digits of ``block`` ``(n, S, S)`` in place.

    Returns:
        ``(src, valid, ink boxes, patch boxes)``: digit indices and slot validity ``(n, K)``, boxes ``(n, K, 4)``
        float32 in image coordinates.
    """
    n = len(block)
    if spec.layout == "grid":
        src, xs, ys, valid = _grid_layout(spec, n, pool, rng)
    else:
        src, xs, ys, valid = _free_layout(spec, n, pool, digit_boxes, rng)
    _paste(block, digits, src, xs, ys, valid)
    # Ink boxes move with their patch; float32 is what the evaluation code consumes.
    corner = np.stack([xs, ys, xs, ys], axis=-1)
    shifted = (digit_boxes[src] + corner).astype(np.float32)
    patch = (corner + np.array([0, 0, DIGIT_SIZE, DIGIT_SIZE])).astype(np.float32)
    return src, valid, shifted, patch
