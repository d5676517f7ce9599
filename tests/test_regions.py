"""Regions for the grounded captioner (issue 29): RoIAlign, proposal sources, the frozen region encoder."""

import math

import numpy as np
import pytest
import torch

from weakground.errors import ConfigError, InputError
from weakground.regions import (RegionConfig, RegionEncoder, build_source, encode_dataset, resize_square, roi_align,
                                scale_boxes)
from weakground.regions.roi_align import roi_align_mean
from weakground.regions.sources import grid_boxes, ground_truth_array, iou_matrix
from weakground.registry import REGION_SOURCES


# ------------------------------------------------------------------------------------- naive RoIAlign reference


def _bilinear(fm: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate (roi_align_kernel.cpp), one point, plain Python."""
    c, h, w = fm.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(c, dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = math.floor(y), math.floor(x)
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fm[:, y_low, x_low] + hy * lx * fm[:, y_low, x_high]
            + ly * hx * fm[:, y_high, x_low] + ly * lx * fm[:, y_high, x_high])


def _naive_roi_align(fm, box, scale_hw, out, ratio, aligned):
    """One box on one ``[C, h, w]`` map, with explicit loops over bins and samples."""
    fm = fm.double()
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) for v in box)
    start_x, start_y = x1 * scale_hw[1] - offset, y1 * scale_hw[0] - offset
    roi_w, roi_h = x2 * scale_hw[1] - offset - start_x, y2 * scale_hw[0] - offset - start_y
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / out, roi_h / out
    result = torch.zeros(fm.shape[0], out, out, dtype=torch.float64)
    for ph in range(out):
        for pw in range(out):
            acc = torch.zeros(fm.shape[0], dtype=torch.float64)
            for iy in range(ratio):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    acc += _bilinear(fm, y, x)
            result[:, ph, pw] = acc / (ratio * ratio)
    return result


def _test_boxes(gen: torch.Generator, height: int, width: int) -> torch.Tensor:
    """Whole image, overhanging every border, far outside, sub-cell, zero-size, plus random boxes."""
    fixed = torch.tensor([
        [0, 0, width, height], [-9, -5, 20, 10], [width - 10, height - 6, width + 12, height + 9],
        [-40, -40, -20, -20], [10.3, 20.1, 11.0, 20.5], [30, 12, 30, 25], [width - 2, 1, width, 3],
    ], dtype=torch.float32)
    corner = torch.rand(6, 2, generator=gen) * torch.tensor([width, height])
    size = torch.rand(6, 2, generator=gen) * torch.tensor([width, height]) / 2
    return torch.cat([fixed, torch.cat([corner, corner + size], 1)])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size,ratio", [(1, 1), (3, 2), (7, 2), (4, 3)])
def test_roi_align_matches_the_naive_reference(aligned, output_size, ratio):
    gen = torch.Generator().manual_seed(output_size * 10 + ratio)
    # a 5x6 map of a 37x50 image: scales 5/37 and 6/50, not a clean stride
    features = torch.randn(2, 3, 5, 6, generator=gen)
    boxes = [_test_boxes(gen, 37, 50), _test_boxes(gen, 37, 50)[:4]]
    got = roi_align(features, boxes, (37, 50), output_size, ratio, aligned)
    want = torch.stack([_naive_roi_align(features[i], b, (5 / 37, 6 / 50), output_size, ratio, aligned)
                        for i in range(2) for b in boxes[i]])
    assert got.shape == (len(boxes[0]) + len(boxes[1]), 3, output_size, output_size)
    assert (got.double() - want).abs().max() < 1e-5
    assert (roi_align_mean(features, boxes, (37, 50), output_size, ratio, aligned).double()
            - want.mean(dim=(2, 3))).abs().max() < 1e-5


def test_roi_align_takes_a_box_tensor_and_a_one_cell_map():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 4, 7, 7, generator=gen)
    boxes = torch.stack([_test_boxes(gen, 224, 224)[:5], _test_boxes(gen, 224, 224)[:5]])
    got = roi_align(features, boxes, (224, 224), 2, 2)
    want = torch.stack([_naive_roi_align(features[i], b, (1 / 32, 1 / 32), 2, 2, True)
                        for i in range(2) for b in boxes[i]])
    assert got.shape == (10, 4, 2, 2) and (got.double() - want).abs().max() < 1e-5
    single = torch.randn(1, 2, 1, 1, generator=gen)  # a 32 px image at stride 32
    box = torch.tensor([[4.0, 4.0, 20.0, 28.0]])
    want = _naive_roi_align(single[0], box[0], (1 / 32, 1 / 32), 3, 2, True)
    assert (roi_align(single, [box], (32, 32), 3, 2).double()[0] - want).abs().max() < 1e-5


def test_roi_align_gradient_reaches_the_features():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    boxes = [_test_boxes(gen, 32, 40)[[0, 1, 4, 8]].double(), _test_boxes(gen, 32, 40)[[2, 9]].double()]
    assert torch.autograd.gradcheck(lambda f: roi_align(f, boxes, (32, 40), 3, 2), (features,))
    assert torch.autograd.gradcheck(lambda f: roi_align_mean(f, boxes, (32, 40), 3, 2), (features,))


def test_roi_align_edge_cases_and_errors():
    features = torch.randn(2, 3, 4, 4)
    assert roi_align(features, [torch.zeros(0, 4), torch.zeros(0, 4)], (64, 64)).shape == (0, 3, 7, 7)
    assert roi_align_mean(features, torch.zeros(2, 0, 4), (64, 64)).shape == (0, 3)
    with pytest.raises(InputError, match=r"\[B, K, 4\]"):
        roi_align(features, torch.zeros(2, 3, 5), (64, 64))
    with pytest.raises(InputError, match=r"\[K, 4\]"):
        roi_align(features, [torch.zeros(3, 4), torch.zeros(4)], (64, 64))
    with pytest.raises(InputError, match="2"):
        roi_align(features, [torch.zeros(1, 4)], (64, 64))
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(features, [torch.zeros(1, 4)] * 2, (64, 64), sampling_ratio=0)


# ---------------------------------------------------------------------------------------------- sources


def _scenes(n: int, split: str = "val"):
    from weakground.data.scenes import SceneSpec, iter_scenes

    return [(np.asarray(s.image), np.array([o.box.as_list() for o in s.objects], np.float32))
            for s in iter_scenes(SceneSpec(seed=0), split, n)]


@pytest.fixture(scope="module")
def scenes():
    return _scenes(40)


def _two_squares() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((96, 128, 3), (90, 100, 80), np.uint8)
    image[10:40, 20:50] = (220, 40, 40)
    image[50:80, 70:120] = (40, 180, 60)
    return image, np.array([[20, 10, 50, 40], [70, 50, 120, 80]], np.float32)


def test_every_source_is_registered_and_returns_well_formed_boxes(scenes):
    assert {"components", "grid", "oracle"} <= set(REGION_SOURCES.names())
    for name in ("components", "grid", "oracle"):
        source = build_source(RegionConfig(source=name, max_regions=12))
        assert source.name == name and source.needs_ground_truth == (name == "oracle")
        for image, gt in scenes[:15]:
            boxes = source.boxes(image, gt)
            h, w = image.shape[:2]
            assert boxes.dtype == np.float32 and boxes.shape == (12, 4)  # the grid always fills K
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            overlaps = iou_matrix(boxes, boxes) - np.eye(len(boxes))
            assert overlaps.max() < source.config.dedup_iou


def test_components_finds_two_squares_exactly():
    image, truth = _two_squares()
    boxes = build_source(RegionConfig()).boxes(image)
    assert iou_matrix(truth, boxes[:2]).max(axis=1).min() > 0.9
    np.testing.assert_array_equal(boxes[:2], truth[[1, 0]])  # largest first, tight pixel edges


def test_components_recall_on_generated_scenes(scenes):
    source = build_source(RegionConfig())
    hits = total = 0
    for image, gt in scenes:
        hits += int((iou_matrix(gt, source.boxes(image)).max(axis=1) >= 0.5).sum())
        total += len(gt)
    assert hits / total >= 0.9, f"components recall {hits}/{total}"


def test_oracle_returns_the_given_boxes_first_then_the_grid():
    image, truth = _two_squares()
    source = build_source(RegionConfig(source="oracle", max_regions=8))
    with_duplicate = np.concatenate([truth, truth[:1], [[-5, -5, 30, 20]]])  # a repeat and an overhanging box
    boxes = source.boxes(image, with_duplicate)
    np.testing.assert_array_equal(boxes[:3], [truth[0], truth[1], [0, 0, 30, 20]])
    np.testing.assert_array_equal(boxes[3], [0, 0, 128, 96])  # padding starts with the whole image
    with pytest.raises(InputError, match="ground-truth"):
        source.boxes(image)


def test_ground_truth_and_resizing_helpers():
    from weakground.data.types import Box

    np.testing.assert_array_equal(ground_truth_array([Box(1, 2, 3, 4)]), [[1, 2, 3, 4]])
    assert ground_truth_array([]).shape == (0, 4)
    image, truth = _two_squares()
    assert resize_square(image, 64).shape == (64, 64, 3)
    np.testing.assert_allclose(scale_boxes(truth, (96, 128), (48, 32)), truth * [0.25, 0.5, 0.25, 0.5])


def test_grid_is_coarse_first_and_covers_the_image():
    boxes = grid_boxes(50, 70, (1, 2, 3))
    assert boxes.shape == (14, 4)
    np.testing.assert_array_equal(boxes[0], [0, 0, 70, 50])
    for start, n in ((1, 2), (5, 3)):
        cells = boxes[start:start + n * n]
        assert ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum() == 70 * 50


def test_source_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown region source 'detector'.*components"):
        build_source(RegionConfig(source="detector"))
    with pytest.raises(ConfigError, match="max_regions"):
        RegionConfig(max_regions=0)
    with pytest.raises(ConfigError, match="level"):
        RegionConfig(level="c6")
    with pytest.raises(ConfigError, match="merge_radii"):
        RegionConfig(merge_radii=2)
    with pytest.raises(ConfigError, match="sampling_ratio"):
        RegionConfig(sampling_ratio="2")
    with pytest.raises(InputError, match=r"\[n, 4\]"):
        build_source(RegionConfig(source="oracle")).boxes(np.zeros((64, 64, 3), np.uint8), [[1, 2, 3, 4], [1, 2]])
    source = build_source(RegionConfig())
    with pytest.raises(InputError, match="32 px"):
        source.boxes(np.zeros((31, 64, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        source.boxes(np.zeros((64, 64), np.uint8))


# ---------------------------------------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def encoder():
    return RegionEncoder(RegionConfig(max_regions=6, level="c5"))


def _batch(n: int, size: int = 96):
    images, boxes = [], []
    source = build_source(RegionConfig(max_regions=6))
    for image, _ in _scenes(n, "test"):
        images.append(resize_square(image, size))
        boxes.append(scale_boxes(source.boxes(image), image.shape[:2], (size, size)))
    boxes[1] = boxes[1][:2]  # fewer than K: padding
    return np.stack(images), boxes


def test_region_encoder_outputs(encoder):
    images, boxes = _batch(3)
    regions = encoder(images, boxes)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert regions.boxes.shape == (3, 6, 4) and regions.features.shape == (3, 6, 320)
    assert regions.positions.shape == (3, 6, 5) and regions.classes.shape == (3, 6, 1000)
    assert regions.valid.tolist() == [[True] * 6, [True] * 2 + [False] * 4, [True] * 6]
    for t in (regions.features, regions.positions, regions.classes):
        assert torch.isfinite(t).all() and not t.requires_grad
    valid = regions.valid
    assert torch.allclose(regions.classes[valid].sum(-1), torch.ones(int(valid.sum())), atol=1e-5)
    assert (regions.positions >= 0).all() and (regions.positions <= 1).all()
    assert (regions.features[~valid] == 0).all() and (regions.classes[~valid] == 0).all()
    x1, y1, x2, y2 = torch.from_numpy(boxes[0][0])
    expected = torch.stack([x1 / 96, x2 / 96, y1 / 96, y2 / 96, (x2 - x1) * (y2 - y1) / 96 ** 2])
    assert torch.allclose(regions.positions[0, 0], expected)  # the paper's order: x1, x2, y1, y2, area


def test_encode_dataset_matches_one_batch(encoder):
    images, boxes = _batch(5)
    whole = encoder(images, boxes)
    batched = encode_dataset(images, boxes, batch_size=2, encoder=encoder)
    assert len(batched) == 5 and torch.equal(batched.valid, whole.valid)
    assert torch.allclose(batched.features, whole.features, atol=1e-4)
    assert torch.allclose(batched.classes, whole.classes, atol=1e-5)
    assert len(batched[1:3]) == 2 and batched[4].features.shape == (1, 6, 320)
    head = RegionEncoder(RegionConfig(max_regions=6, level="head"))
    assert head(images[:1], boxes[:1]).features.shape == (1, 6, 1280)


def test_region_encoder_errors(encoder):
    images, boxes = _batch(2)
    with pytest.raises(InputError, match="32 px"):
        encoder([np.zeros((16, 16, 3), np.uint8)], [np.zeros((1, 4), np.float32)])
    with pytest.raises(InputError, match="one size"):
        encoder([images[0], images[1][:64]], boxes)
    with pytest.raises(InputError, match=r"\[k, 4\]"):
        encoder(images, [boxes[0], boxes[1][:, :3]])
    with pytest.raises(InputError, match="max_regions=6"):
        encoder(images, [np.zeros((7, 4), np.float32), boxes[1]])
    with pytest.raises(InputError, match="batch holds 2"):
        encoder(images, boxes[:1])
    with pytest.raises(InputError, match=r"\[B, K, 4\]"):
        encoder(images, np.zeros((2, 4), np.float32))
