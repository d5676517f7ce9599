"""Pointing game, attention correctness, baselines and retrieval: hand cases and naive references."""

import math

import numpy as np
import pytest
import torch

from weakground.metrics.pointing import (
    PointingProtocol,
    attention_correctness,
    box_accuracy,
    breakdown_by_type,
    center_baseline,
    center_baseline_point,
    heatmap_point,
    pointing_game,
    pointing_hit,
    random_baseline_accuracy,
)
from weakground.metrics.retrieval import recall_at_k, retrieval_ranks, retrieval_report

T = torch.tensor
BOX = T([[2.0, 2.0, 5.0, 5.0]])  # pixels 2..4 in both directions of a 10 x 10 image


def _peak_map(h, w, i, j):
    m = torch.zeros(h, w)
    m[i, j] = 1.0
    return m


# ------------------------------------------------------------------------------------------- protocol


def test_protocol_defaults_describe_and_validation():
    p = PointingProtocol()
    d = p.describe()
    assert (d["tolerance"], d["box_rule"], d["min_area"], d["argmax_on"]) == (0.0, "any", 0.0, "image")
    zhang = PointingProtocol(tolerance=15, box_rule="union", min_area=0.05, argmax_on="grid")
    assert zhang.describe()["tolerance"] == 15
    for bad in (dict(tolerance=-1), dict(tolerance=float("nan")), dict(box_rule="all"), dict(min_area=1.5),
                dict(min_area=-0.1), dict(argmax_on="feature")):
        with pytest.raises(ValueError):
            PointingProtocol(**bad)
    assert PointingProtocol(tolerance=np.int64(15)).tolerance == 15
    with pytest.raises(Exception):
        p.tolerance = 3.0  # frozen


# ------------------------------------------------------------------------------------------- hits


def test_pointing_hit_hand_cases():
    assert pointing_hit((3.5, 3.5), BOX)
    assert not pointing_hit((6.5, 6.5), BOX)
    # (6.5, 6.5) is 1.5 px right of and 1.5 px below the box: Euclidean distance 1.5 * sqrt(2) ~ 2.12
    assert not pointing_hit((6.5, 6.5), BOX, PointingProtocol(tolerance=2))
    assert pointing_hit((6.5, 6.5), BOX, PointingProtocol(tolerance=2.2))
    # straight to the right: distance 1.5
    assert pointing_hit((6.5, 3.5), BOX, PointingProtocol(tolerance=2))
    assert not pointing_hit((6.5, 3.5), BOX, PointingProtocol(tolerance=1))
    # half-open box: the left/top edges are in, the right/bottom edges are out (at tolerance 0 only)
    assert pointing_hit((2.0, 2.0), BOX)
    assert not pointing_hit((5.0, 3.5), BOX)
    assert pointing_hit((5.0, 3.5), BOX, PointingProtocol(tolerance=0.01))
    # degenerate boxes and no boxes never hit
    assert not pointing_hit((3.0, 3.0), T([[4.0, 2.0, 2.0, 5.0]]), PointingProtocol(tolerance=5))
    assert not pointing_hit((3.0, 3.0), torch.zeros(0, 4))


def test_union_rule_differs_from_any():
    boxes = T([[0.0, 0.0, 2.0, 2.0], [6.0, 6.0, 8.0, 8.0]])
    point = (4.5, 4.5)  # between the two boxes, inside their union box [0, 0, 8, 8]
    assert not pointing_hit(point, boxes, PointingProtocol(box_rule="any"))
    assert pointing_hit(point, boxes, PointingProtocol(box_rule="union"))
    assert pointing_hit((7.5, 7.5), boxes, PointingProtocol(box_rule="any"))


# ------------------------------------------------------------------------------------------- argmax


def test_heatmap_point_grid_and_image():
    grid = T([[0.0, 0.0], [1.0, 0.0]])  # argmax cell (row 1, col 0)
    assert heatmap_point(grid, (10, 10), "grid") == (2.5, 7.5)
    # bilinear (align_corners=False) upsampling x5 copies the edge cell onto rows 7..9 and cols 0..2 exactly;
    # the first maximum in row-major order is pixel (7, 0)
    assert heatmap_point(grid, (10, 10), "image") == (0.5, 7.5)
    # non-square grid and image: cell (0, 2) of a 2 x 3 grid on H=4, W=12 -> x = 2.5 * 4, y = 0.5 * 2
    assert heatmap_point(_peak_map(2, 3, 0, 2), (4, 12), "grid") == (10.0, 1.0)
    # at image resolution the map is used as is
    assert heatmap_point(_peak_map(10, 10, 3, 6), (10, 10), "image") == (6.5, 3.5)


def test_heatmap_point_ties_negative_maps_and_errors():
    assert heatmap_point(torch.zeros(2, 2), (10, 10), "image") == (0.5, 0.5)
    assert heatmap_point(torch.zeros(2, 2), (10, 10), "grid") == (2.5, 2.5)
    tie = T([[0.0, 1.0], [1.0, 0.0]])
    assert heatmap_point(tie, (2, 2), "image") == (1.5, 0.5)
    # all-negative maps (e.g. logits) keep their argmax although resize_heatmap clips at 0
    neg = T([[-3.0, -2.0], [-1.0, -5.0]])
    assert heatmap_point(neg, (10, 10), "grid") == (2.5, 7.5)
    assert heatmap_point(neg, (10, 10), "image") == (0.5, 7.5)
    with pytest.raises(ValueError):
        heatmap_point(T([[0.0, float("nan")]]), (4, 4))
    with pytest.raises(ValueError):
        heatmap_point(T([[0.0, float("inf")]]), (4, 4), "image")
    assert heatmap_point(T([[0.0, float("inf")]]), (4, 4), "grid") == (3.0, 2.0)
    with pytest.raises(ValueError):
        heatmap_point(torch.zeros(2, 2), (4, 4), "pixels")


# ------------------------------------------------------------------------------------------- game


def test_pointing_game_hits_misses_and_min_area_skipping():
    heatmaps = [_peak_map(10, 10, 3, 3), _peak_map(10, 10, 8, 8), _peak_map(10, 10, 0, 0), torch.rand(10, 10)]
    boxes = [BOX, BOX, T([[0.0, 0.0, 2.0, 2.0]]), torch.zeros(0, 4)]  # areas 9 %, 9 %, 4 %, no box
    sizes = [(10, 10)] * 4
    res = pointing_game(heatmaps, boxes, sizes, PointingProtocol())
    assert res["hits"] == [True, False, True, None]  # no box: skipped
    assert (res["n_queries"], res["n_skipped"], res["n_evaluated"], res["n_hits"]) == (4, 1, 3, 2)
    assert res["accuracy"] == pytest.approx(2 / 3)
    res = pointing_game(heatmaps, boxes, sizes, PointingProtocol(min_area=0.05))
    assert res["hits"] == [True, False, None, None]  # 4 % < 5 %: skipped
    assert res["accuracy"] == 0.5 and res["n_skipped"] == 2
    assert res["protocol"]["min_area"] == 0.05
    # exactly at the threshold is kept (skip only when strictly below)
    assert pointing_game(heatmaps[2:3], boxes[2:3], sizes[2:3], PointingProtocol(min_area=0.04))["hits"] == [True]
    # min_area measures the union box clipped to the image
    big = pointing_game([_peak_map(10, 10, 0, 0)], [T([[-50.0, -50.0, 2.0, 2.0]])], [(10, 10)],
                        PointingProtocol(min_area=0.05))
    assert big["hits"] == [None]
    # everything skipped -> nan
    assert math.isnan(pointing_game(heatmaps[3:], boxes[3:], sizes[3:])["accuracy"])
    with pytest.raises(ValueError):
        pointing_game(heatmaps, boxes[:2], sizes)


def test_pointing_game_grid_protocol_uses_cell_centres():
    # a 2 x 2 map on a 10 x 10 image with box [0, 5, 5, 10] (lower-left quarter)
    box = [T([[0.0, 5.0, 5.0, 10.0]])]
    grid = [T([[0.0, 0.0], [1.0, 0.0]])]
    assert pointing_game(grid, box, [(10, 10)], PointingProtocol(argmax_on="grid"))["hits"] == [True]
    # the two protocols point at different pixels: grid -> (2.5, 7.5), image -> first max pixel (7, 0) = (0.5, 7.5)
    at_grid_point, at_image_point = [T([[2.0, 7.0, 3.0, 8.0]])], [T([[0.0, 7.0, 1.0, 8.0]])]
    grid_protocol, image_protocol = PointingProtocol(argmax_on="grid"), PointingProtocol(argmax_on="image")
    assert pointing_game(grid, at_grid_point, [(10, 10)], grid_protocol)["hits"] == [True]
    assert pointing_game(grid, at_grid_point, [(10, 10)], image_protocol)["hits"] == [False]
    assert pointing_game(grid, at_image_point, [(10, 10)], grid_protocol)["hits"] == [False]
    assert pointing_game(grid, at_image_point, [(10, 10)], image_protocol)["hits"] == [True]


# ------------------------------------------------------------------------------------------- attention


def test_attention_correctness_hand_values():
    hm = torch.ones(4, 4)
    hm[0:2, 0:2] = 3.0  # total mass 12 * 1 + 4 * 3 = 24
    assert attention_correctness(hm, T([[0.0, 0.0, 2.0, 2.0]]), (4, 4)) == pytest.approx(12 / 24)
    assert attention_correctness(hm, T([[1.0, 1.0, 3.0, 3.0]]), (4, 4)) == pytest.approx(6 / 24)
    # union of the two masks (7 pixels, overlap counted once): 12 + 3 = 15
    two = T([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    assert attention_correctness(hm, two, (4, 4)) == pytest.approx(15 / 24)
    assert attention_correctness(hm, T([[0.0, 0.0, 4.0, 4.0]]), (4, 4)) == pytest.approx(1.0)
    assert attention_correctness(hm, torch.zeros(0, 4), (4, 4)) == 0.0
    # scale invariance, and an all-zero (or all-negative, clipped) map spreads its mass uniformly
    assert attention_correctness(hm * 7, two, (4, 4)) == pytest.approx(15 / 24)
    assert attention_correctness(torch.zeros(2, 2), T([[0.0, 0.0, 2.0, 2.0]]), (4, 4)) == pytest.approx(4 / 16)
    assert attention_correctness(-torch.ones(4, 4), T([[0.0, 0.0, 2.0, 4.0]]), (4, 4)) == pytest.approx(0.5)
    # resized: a constant 2 x 2 map becomes uniform on 4 x 6
    assert attention_correctness(torch.full((2, 2), 0.3), T([[0.0, 0.0, 3.0, 2.0]]), (4, 6)) == pytest.approx(6 / 24)
    # negative values are clipped before normalising
    hm2 = T([[2.0, -5.0], [1.0, 1.0]])
    assert attention_correctness(hm2, T([[0.0, 0.0, 1.0, 1.0]]), (2, 2)) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------- baselines


def test_random_baseline_exact_values():
    sizes = [(10, 10)]
    assert random_baseline_accuracy([BOX], sizes) == pytest.approx(9 / 100)
    # tolerance 1: box 3x3 + four 1x3 strips (dx or dy 0.5) + four corners (0.5, 0.5) -> 9 + 12 + 4 = 25
    assert random_baseline_accuracy([BOX], sizes, PointingProtocol(tolerance=1)) == pytest.approx(25 / 100)
    # tolerance 2: columns/rows with offsets {0 (x3), 0.5 (x2), 1.5 (x2)} -> 7 x 7 minus the 4 (1.5, 1.5) corners
    assert random_baseline_accuracy([BOX], sizes, PointingProtocol(tolerance=2)) == pytest.approx(45 / 100)
    two = T([[0.0, 0.0, 2.0, 2.0], [6.0, 6.0, 8.0, 8.0]])
    assert random_baseline_accuracy([two], sizes, PointingProtocol(box_rule="any")) == pytest.approx(8 / 100)
    assert random_baseline_accuracy([two], sizes, PointingProtocol(box_rule="union")) == pytest.approx(64 / 100)
    # mean over queries; boxes are clipped to the image; skipped queries do not count
    queries = [BOX, T([[5.0, 0.0, 20.0, 20.0]]), T([[0.0, 0.0, 1.0, 1.0]])]
    assert random_baseline_accuracy(queries, [(10, 10)] * 3) == pytest.approx((0.09 + 0.5 + 0.01) / 3)
    assert random_baseline_accuracy(queries, [(10, 10)] * 3, PointingProtocol(min_area=0.05)) == pytest.approx(
        (0.09 + 0.5) / 2)
    assert math.isnan(random_baseline_accuracy([torch.zeros(0, 4)], sizes))


def test_random_baseline_matches_naive_pixel_loop_and_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    boxes, sizes = [], []
    for _ in range(5):
        h, w = (int(v) for v in torch.randint(5, 15, (2,), generator=gen))
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([w, h])
        wh = torch.rand(3, 2, generator=gen) * 6
        boxes.append(torch.cat([xy, xy + wh], 1))
        sizes.append((h, w))
    for protocol in (PointingProtocol(tolerance=1.7), PointingProtocol(tolerance=0.0, box_rule="union"),
                     PointingProtocol(tolerance=3.0, box_rule="union")):
        naive = np.mean([
            np.mean([pointing_hit((j + 0.5, i + 0.5), b, protocol) for i in range(h) for j in range(w)])
            for b, (h, w) in zip(boxes, sizes)
        ])
        assert random_baseline_accuracy(boxes, sizes, protocol) == pytest.approx(naive, abs=1e-12)
    mc = random_baseline_accuracy([BOX], [(10, 10)], PointingProtocol(tolerance=2), n_samples=4000, seed=1)
    assert mc == pytest.approx(0.45, abs=0.03)
    with pytest.raises(ValueError):
        random_baseline_accuracy([BOX], [(10, 10)], n_samples=0)


def test_center_baseline():
    assert center_baseline_point((10, 10)) == (5.0, 5.0)
    assert center_baseline_point((9, 20)) == (10.0, 4.5)
    boxes = [BOX, T([[3.0, 3.0, 7.0, 7.0]]), T([[5.0, 5.0, 8.0, 8.0]])]
    sizes = [(10, 10)] * 3
    # (5, 5) is on BOX's exclusive corner: a miss at tolerance 0, a hit at any positive tolerance
    assert center_baseline(boxes, sizes) == pytest.approx(2 / 3)
    assert center_baseline(boxes, sizes, PointingProtocol(tolerance=0.5)) == pytest.approx(1.0)
    assert center_baseline(boxes + [T([[0.0, 0.0, 1.0, 1.0]])], sizes + [(10, 10)],
                           PointingProtocol(min_area=0.05)) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- boxes, types


def test_box_accuracy():
    preds = [T([0.0, 0.0, 2.0, 2.0]), T([0.0, 0.0, 2.0, 2.0]), T([0.0, 0.0, 2.0, 2.0])]
    gts = [T([[1.0, 1.0, 3.0, 3.0]]),  # IoU 1/7
           T([[5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 1.0]]),  # best IoU exactly 0.5
           torch.zeros(0, 4)]  # no ground truth: wrong
    assert box_accuracy(preds, gts) == pytest.approx(1 / 3)
    assert box_accuracy(preds, gts, iou_threshold=0.1) == pytest.approx(2 / 3)
    assert box_accuracy(preds, gts, iou_threshold=0.6) == 0.0
    assert math.isnan(box_accuracy([], []))
    with pytest.raises(ValueError):
        box_accuracy(preds, gts, iou_threshold=0.0)


def test_breakdown_by_type_multi_type_queries():
    values = [True, False, None, 0.5]
    types = [["people"], ["people", "clothing"], ["people", "other"], ["clothing", "clothing"]]
    out = breakdown_by_type(values, types)
    assert list(out) == ["clothing", "other", "people"]
    assert out["people"] == {"mean": 0.5, "count": 2}
    assert out["clothing"] == {"mean": 0.25, "count": 2}  # duplicate type in one query counts once
    assert out["other"]["count"] == 0 and math.isnan(out["other"]["mean"])
    with pytest.raises(ValueError):
        breakdown_by_type([1.0], ["people"])


# ------------------------------------------------------------------------------------------- retrieval


def _naive_ranks(scores: np.ndarray, positives: list[set[int]]) -> np.ndarray:
    """Full argsort per query: score descending, negatives before positives within ties."""
    ranks = []
    for s, pos in zip(scores, positives):
        is_pos = np.array([j in pos for j in range(s.shape[0])])
        order = np.lexsort((is_pos, -s))  # last key is primary
        ranks.append(int(np.flatnonzero(is_pos[order])[0]))
    return np.array(ranks)


def test_retrieval_ranks_hand_case_and_recall():
    scores = T([[0.9, 0.5, 0.1, 0.3],
                [0.2, 0.8, 0.8, 0.1],  # positive 2 ties negative 1: pessimistic rank 1
                [0.7, 0.6, 0.5, 0.4],
                [0.5, 0.5, 0.9, 0.95]])  # positives 0 and 1 tie each other: rank 2, not 3
    positives = [{0}, {2}, {3}, {0, 1}]
    ranks = retrieval_ranks(scores, positives)
    assert ranks.dtype == torch.long and ranks.tolist() == [0, 1, 3, 2]
    # with a single positive, the former positive 1 is a negative tied with positive 0: rank 3
    assert retrieval_ranks(scores, T([0, 2, 3, 0]), chunk_size=3).tolist() == [0, 1, 3, 3]
    assert retrieval_ranks(scores, [0, 2, 3, 0], chunk_size=2).tolist() == [0, 1, 3, 3]
    rec = recall_at_k(ranks)
    assert rec == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.0}  # floor(median 1.5) + 1
    assert recall_at_k(ranks, ks=(2, 3)) == {"R@2": 0.5, "R@3": 0.75, "median_rank": 2.0}
    assert recall_at_k([4, 0, 9])["median_rank"] == 5.0
    assert math.isnan(recall_at_k([])["R@1"])
    with pytest.raises(ValueError):
        retrieval_ranks(scores, [{0}, set(), {1}, {2}])
    with pytest.raises(ValueError):
        retrieval_ranks(scores, T([0, 1, 2, 4]))
    with pytest.raises(ValueError):
        retrieval_ranks(T([[float("nan"), 1.0]]), T([0]))


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_retrieval_ranks_match_naive_argsort_with_ties(chunk_size):
    gen = torch.Generator().manual_seed(chunk_size)
    n_q, n_g = 23, 31
    scores = torch.randint(0, 4, (n_q, n_g), generator=gen).float()  # many ties
    single = torch.randint(0, n_g, (n_q,), generator=gen)
    multi = [set(torch.randint(0, n_g, (int(k),), generator=gen).tolist())
             for k in torch.randint(1, 5, (n_q,), generator=gen)]
    expect_single = _naive_ranks(scores.numpy(), [{int(p)} for p in single])
    assert retrieval_ranks(scores, single, chunk_size).tolist() == expect_single.tolist()
    assert retrieval_ranks(scores, multi, chunk_size).tolist() == _naive_ranks(scores.numpy(), multi).tolist()


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_retrieval_report_matches_naive(chunk_size):
    gen = torch.Generator().manual_seed(100 + chunk_size)
    n_i, d = 12, 3
    t2i = torch.cat([torch.arange(n_i - 1).repeat_interleave(2), torch.randint(0, n_i - 1, (5,), generator=gen)])
    # integer embeddings: exact dot products in any chunking, with ties; image n_i - 1 has no caption
    img = torch.randint(-2, 3, (n_i, d), generator=gen).float()
    txt = torch.randint(-2, 3, (t2i.numel(), d), generator=gen).float()
    full = (txt @ img.T).numpy()
    t2i_naive = _naive_ranks(full, [{int(i)} for i in t2i])
    imgs = sorted(set(t2i.tolist()))
    i2t_naive = _naive_ranks(full.T[imgs], [set(np.flatnonzero(t2i.numpy() == i).tolist()) for i in imgs])
    report = retrieval_report(img, txt, t2i, chunk_size=chunk_size)
    assert report["text_to_image"] == {**recall_at_k(torch.from_numpy(t2i_naive)), "n_queries": t2i.numel()}
    assert report["image_to_text"] == {**recall_at_k(torch.from_numpy(i2t_naive)), "n_queries": n_i - 1}
    assert set(report["text_to_image"]) >= {"R@1", "R@5", "R@10", "median_rank"}
    with pytest.raises(ValueError):
        retrieval_report(img, txt, t2i[:-1])
