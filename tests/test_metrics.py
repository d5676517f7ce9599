"""Metrics against hand-computed cases and naive references."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from weakground.metrics import (
    auroc,
    average_precision,
    box_iou,
    class_average_precision,
    heatmap_to_boxes,
    match_detections,
    mean_ap,
    peak_box,
    resize_heatmap,
)

T = torch.tensor


# ----------------------------------------------------------------------------------------------- box_iou


def test_box_iou_hand_cases():
    a = T([[0.0, 0.0, 2.0, 2.0]])
    b = T([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 7.0, 7.0], [2.0, 0.0, 4.0, 2.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    # overlap 1 pixel, union 4 + 4 - 1 = 7; identical; disjoint; touching edges (exclusive ends) share nothing
    assert iou[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.0], abs=1e-7)


def test_box_iou_exclusive_end_convention():
    # columns 3..5 and rows 0..1 -> [3, 0, 6, 2], area 6; columns 5..5 of the same rows -> [5, 0, 6, 2], area 2
    iou = box_iou(T([[3, 0, 6, 2]]), T([[5, 0, 6, 2]]))  # integer input is promoted
    assert iou.dtype == torch.float32
    assert iou.item() == pytest.approx(2 / 6)


def test_box_iou_degenerate_boxes_give_zero_not_nan():
    a = T([[1.0, 1.0, 1.0, 5.0], [3.0, 3.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = T([[1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 4.0, 4.0]])
    iou = box_iou(a, b)
    assert not torch.isnan(iou).any()
    assert iou.tolist() == [[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 2)
    assert box_iou(b, torch.zeros(0, 4)).shape == (2, 0)
    with pytest.raises(ValueError):
        box_iou(T([0.0, 0.0, 1.0, 1.0]), b)


def _naive_iou(a, b):
    def area(x):
        return max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])

    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            inter = max(0.0, min(p[2], q[2]) - max(p[0], q[0])) * max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = area(p) + area(q) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_box_iou_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 12, (15, 4), generator=g).double()  # includes inverted and zero-area boxes
    b = torch.randint(0, 12, (9, 4), generator=g).double()
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou.numpy(), _naive_iou(a.tolist(), b.tolist()), atol=1e-12)
    np.testing.assert_allclose(box_iou(b, a).numpy(), iou.numpy().T, atol=1e-12)


# ----------------------------------------------------------------------------------------- resize_heatmap


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_resize_heatmap_shapes(lead):
    hm = torch.rand(*lead, 4, 5)
    out = resize_heatmap(hm, (8, 10))
    assert out.shape == (*lead, 8, 10)
    assert (out >= 0).all()
    ref = F.interpolate(hm.reshape(-1, 1, 4, 5), size=(8, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref.reshape(*lead, 8, 10))


def test_resize_heatmap_values_and_clamp():
    torch.testing.assert_close(resize_heatmap(torch.full((3, 3), 0.7), (7, 5)), torch.full((7, 5), 0.7))
    hm = torch.rand(6, 6)
    torch.testing.assert_close(resize_heatmap(hm, (6, 6)), hm)  # same size is the identity
    assert (resize_heatmap(-torch.rand(2, 3, 3), (5, 5)) == 0).all()  # clamp(min=0)
    # align_corners=False, upsampling [0, 1] by 2: pixel centres land at 0.25/0.75 of the way -> 0, .25, .75, 1
    assert resize_heatmap(T([[0.0, 1.0]]), (1, 4))[0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert resize_heatmap(torch.ones(2, 2, dtype=torch.uint8), (3, 3)).dtype == torch.float32
    with pytest.raises(ValueError):
        resize_heatmap(torch.rand(5), (3, 3))


# --------------------------------------------------------------------------------- heatmap_to_boxes / peak


def _two_blob_map():
    hm = torch.zeros(8, 10)
    hm[1:3, 1:4] = 0.6  # blob A: rows 1-2, cols 1-3 ...
    hm[2, 3] = 1.0  # ... with the global peak
    hm[3, 4] = 0.7  # touches (2, 3) only diagonally: 8-connected, so still blob A -> rows 1-3, cols 1-4
    hm[5:7, 6:9] = 0.8  # blob B: rows 5-6, cols 6-8
    hm[7, 0] = 0.4  # below 0.5 * max, above 0.3 * max
    return hm


def test_heatmap_to_boxes_two_blobs():
    boxes, scores = heatmap_to_boxes(_two_blob_map(), threshold=0.5)
    assert boxes.tolist() == [[1.0, 1.0, 5.0, 4.0], [6.0, 5.0, 9.0, 7.0]]
    assert scores.tolist() == pytest.approx([1.0, 0.8])
    assert boxes.dtype == torch.float32


def test_heatmap_to_boxes_threshold_rule():
    hm = _two_blob_map()
    boxes, scores = heatmap_to_boxes(hm, threshold=0.3)  # the 0.4 pixel now passes: its own 1x1 box
    assert boxes.tolist() == [[1.0, 1.0, 5.0, 4.0], [6.0, 5.0, 9.0, 7.0], [0.0, 7.0, 1.0, 8.0]]
    assert scores.tolist() == pytest.approx([1.0, 0.8, 0.4])
    # relative to the maximum: rescaling the map changes nothing but the scores
    boxes10, scores10 = heatmap_to_boxes(10 * hm, threshold=0.3)
    assert boxes10.tolist() == boxes.tolist()
    assert scores10.tolist() == pytest.approx([10.0, 8.0, 4.0])
    # >= : a pixel exactly at threshold * max is kept
    boxes, scores = heatmap_to_boxes(T([[1.0, 0.0, 0.5, 0.49]]), threshold=0.5)
    assert boxes.tolist() == [[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]]
    # at threshold 0.75 blob A shrinks to its peak and the diagonal pixel is dropped (0.7 < 0.75); B goes
    boxes, _ = heatmap_to_boxes(hm, threshold=0.75)
    assert boxes.tolist() == [[3.0, 2.0, 4.0, 3.0], [6.0, 5.0, 9.0, 7.0]]
    with pytest.raises(ValueError):
        heatmap_to_boxes(hm, threshold=1.5)


def test_heatmap_to_boxes_min_area_and_max_boxes():
    hm = _two_blob_map()
    boxes, _ = heatmap_to_boxes(hm, threshold=0.3, min_area=2)  # the single pixel is dropped
    assert boxes.tolist() == [[1.0, 1.0, 5.0, 4.0], [6.0, 5.0, 9.0, 7.0]]
    boxes, scores = heatmap_to_boxes(hm, threshold=0.3, max_boxes=1)
    assert boxes.tolist() == [[1.0, 1.0, 5.0, 4.0]] and scores.tolist() == [1.0]


@pytest.mark.parametrize("hm", [torch.zeros(5, 6), -torch.ones(5, 6), torch.full((5, 6), float("nan")),
                                torch.zeros(0, 4)])
def test_heatmap_to_boxes_empty_map(hm):
    boxes, scores = heatmap_to_boxes(hm)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_heatmap_to_boxes_nan_anywhere_gives_no_boxes():
    hm = _two_blob_map()
    hm[0, 9] = float("nan")
    boxes, scores = heatmap_to_boxes(hm)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def _naive_components(mask):
    """Flood fill with 8-connectivity, components in raster order of their first pixel."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                stack, pixels = [(y, x)], []
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    pixels.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                comps.append(pixels)
    return comps


def test_heatmap_to_boxes_matches_naive_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(20):
        hm = rng.random((11, 13)) ** 3
        comps = _naive_components(hm >= 0.4 * hm.max())
        ref = []
        for pixels in comps:
            ys, xs = zip(*pixels)
            ref.append(([min(xs), min(ys), max(xs) + 1, max(ys) + 1], max(hm[p] for p in pixels), len(pixels)))
        ref = [r for r in ref if r[2] >= 2]
        ref.sort(key=lambda r: -r[1])  # stable, like the implementation
        boxes, scores = heatmap_to_boxes(torch.from_numpy(hm), threshold=0.4, min_area=2)
        assert boxes.tolist() == [r[0] for r in ref]
        np.testing.assert_allclose(scores.numpy(), [r[1] for r in ref])


def test_peak_box_picks_component_of_argmax():
    hm = _two_blob_map()
    box, peak = peak_box(hm, threshold=0.5)
    assert box.tolist() == [1.0, 1.0, 5.0, 4.0] and peak == pytest.approx(1.0)
    hm[6, 8] = 2.0  # now the global peak is in the smaller blob B; at 0.5 * 2 only that pixel survives
    box, peak = peak_box(hm, threshold=0.5)
    assert box.tolist() == [8.0, 6.0, 9.0, 7.0] and peak == pytest.approx(2.0)
    box, _ = peak_box(hm, threshold=0.35)  # >= 0.7: all of B, and A's 1.0 and 0.7 elsewhere
    assert box.tolist() == [6.0, 5.0, 9.0, 7.0]


def test_peak_box_blank_map():
    box, peak = peak_box(torch.zeros(4, 4))
    assert box.tolist() == [0.0, 0.0, 0.0, 0.0] and peak == 0.0
    assert box_iou(box[None], T([[0.0, 0.0, 4.0, 4.0]])).item() == 0.0


# ------------------------------------------------------------------------------------------ detection


def test_match_detections_duplicate_is_fp():
    gt = T([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    det = T([[0.0, 0.0, 10.0, 10.0],  # 0.8: IoU 1 with gt0, but gt0 is taken by the 0.9 one -> FP
             [1.0, 0.0, 10.0, 10.0],  # 0.9: IoU 0.9 with gt0 -> TP
             [20.0, 0.0, 30.0, 10.0],  # 0.5: gt1 -> TP
             [40.0, 40.0, 50.0, 50.0]])  # 0.95: no overlap -> FP
    scores = T([0.8, 0.9, 0.5, 0.95])
    assert match_detections(det, scores, gt, 0.5).tolist() == [False, True, True, False]
    assert match_detections(det, scores, gt, 1.0).tolist() == [True, False, True, False]
    assert match_detections(det, scores, torch.zeros(0, 4), 0.5).tolist() == [False] * 4
    assert match_detections(torch.zeros(0, 4), torch.zeros(0), gt, 0.5).shape == (0,)


def test_match_detections_voc_convention_and_boundary():
    gt = T([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    det = T([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    # det1: IoU 80/120 = 2/3 with gt0 (taken), 70/130 = 0.54 with gt1 -> FP under the VOC convention
    assert match_detections(det, T([0.9, 0.8]), gt, 0.5).tolist() == [True, False]
    # IoU exactly at the threshold counts: [0,0,2,1] vs [0,0,4,1] = 2/4
    assert match_detections(T([[0.0, 0.0, 2.0, 1.0]]), T([1.0]), T([[0.0, 0.0, 4.0, 1.0]]), 0.5).tolist() == [True]


def test_average_precision_hand_computed():
    # ranks: TP, FP, TP with 3 GT. precision 1, 1/2, 2/3; recall 1/3, 1/3, 2/3; envelope 1, 2/3, 2/3
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    ap = average_precision(T([0.9, 0.8, 0.7]), T([True, False, True]), n_gt=3)
    assert ap == pytest.approx(float(Fraction(5, 9)), abs=1e-12)
    # input order does not matter, only the score order
    assert average_precision(T([0.7, 0.9, 0.8]), T([True, True, False]), 3) == pytest.approx(5 / 9, abs=1e-12)
    # FP, TP, TP, FP, TP with n_gt 4: precisions at TPs 1/2, 2/3, 3/5; envelope 2/3, 2/3, 3/5
    # AP = 1/4 * 2/3 + 1/4 * 2/3 + 1/4 * 3/5 = 29/60
    ap = average_precision(T([5.0, 4.0, 3.0, 2.0, 1.0]), T([0, 1, 1, 0, 1]), 4)
    assert ap == pytest.approx(29 / 60, abs=1e-12)


def test_average_precision_edge_cases():
    assert average_precision(T([3.0, 2.0, 1.0]), T([True, True, True]), 3) == 1.0
    assert average_precision(T([3.0, 2.0, 1.0, 0.5]), T([True, True, False, False]), 2) == 1.0  # FPs after all TPs
    assert average_precision(T([3.0, 2.0]), T([True, True]), 4) == pytest.approx(0.5)  # missed GT caps recall
    assert math.isnan(average_precision(T([1.0]), T([False]), 0))
    assert average_precision(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 2) == 0.0
    assert average_precision(T([1.0, 0.5]), T([False, False]), 2) == 0.0
    with pytest.raises(ValueError):
        average_precision(T([1.0, 0.5]), T([True, True]), 1)


def test_class_average_precision_two_images_two_classes():
    gt = [
        (0, 0, T([[0.0, 0.0, 10.0, 10.0]])),
        (0, 1, T([[20.0, 20.0, 30.0, 30.0]])),
        (1, 0, T([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [70.0, 70.0, 80.0, 80.0]])),
        (1, 3, torch.zeros(0, 4)),  # a class with no boxes: omitted
    ]
    det = [
        (0, 0, T([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]), T([0.9, 0.3])),  # TP, duplicate FP
        (1, 0, T([[50.0, 50.0, 60.0, 60.0], [100.0, 100.0, 110.0, 110.0]]), T([0.6, 0.8])),  # TP, FP
        (0, 1, T([[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]]), T([0.7, 0.9])),  # TP, FP
        (1, 1, T([[20.0, 20.0, 30.0, 30.0]]), T([0.95])),  # no class-1 GT in image 1: FP
        (0, 2, T([[0.0, 0.0, 10.0, 10.0]]), T([0.5])),  # class without GT anywhere: ignored
    ]
    # class 0, n_gt 4: 0.9 TP, 0.8 FP, 0.6 TP, 0.3 FP -> AP = 1/4 * 1 + 1/4 * 2/3 = 5/12
    # class 1, n_gt 1: 0.95 FP, 0.9 FP, 0.7 TP -> AP = 1 * 1/3
    ap = class_average_precision(det, gt, 0.5)
    assert sorted(ap) == [0, 1]
    assert ap[0] == pytest.approx(5 / 12, abs=1e-12)
    assert ap[1] == pytest.approx(1 / 3, abs=1e-12)
    assert mean_ap(ap) == pytest.approx(3 / 8, abs=1e-12)
    # a class with GT but no detections scores 0
    assert class_average_precision([], gt, 0.5) == {0: 0.0, 1: 0.0}


def test_mean_ap_ignores_nan():
    assert mean_ap({0: 0.5, 1: float("nan"), 2: 1.0}) == 0.75
    assert math.isnan(mean_ap({}))
    assert math.isnan(mean_ap({0: float("nan")}))


# -------------------------------------------------------------------------------------------- auroc


def _naive_auroc(pos, neg):
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def test_auroc_hand_case():
    # pairs: (.9,.5)=1 (.9,.1)=1 (.5,.5)=1/2 (.5,.1)=1 -> 3.5 / 4
    assert auroc(np.array([0.9, 0.5]), np.array([0.5, 0.1])) == 0.875
    assert auroc(T([3.0, 4.0]), T([1.0, 2.0])) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    assert math.isnan(auroc([], [1.0])) and math.isnan(auroc(np.array([1.0]), np.array([])))


def test_auroc_matches_naive_reference_with_ties():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(1)
    for n, m in [(1, 1), (7, 3), (40, 55), (101, 64)]:
        pos = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
        neg = rng.integers(0, 5, m).astype(float)
        value = auroc(pos, neg)
        assert value == pytest.approx(_naive_auroc(pos, neg), abs=1e-12)
        assert value == pytest.approx(mannwhitneyu(pos, neg).statistic / (n * m), abs=1e-12)
        assert auroc(torch.from_numpy(pos), torch.from_numpy(neg)) == value
