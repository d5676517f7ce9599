"""Instance boxes (weakground.metrics.instances) on hand-built maps whose right boxes can be read off."""

from __future__ import annotations

import pytest
import torch

from weakground.metrics import heatmap_to_boxes, instance_boxes


def _uneven_object() -> torch.Tensor:
    hm = torch.zeros(20, 30)
    hm[4:16, 5:25] = 0.4  # the body: cooler than the threshold of the fixed rule
    hm[5:8, 10:14] = 1.0  # the face
    return hm


def test_an_uneven_object_is_one_whole_box_where_the_fixed_rule_keeps_its_hot_part():
    boxes, _ = heatmap_to_boxes(_uneven_object(), 0.5)
    assert boxes.tolist() == [[10, 5, 14, 8]]
    boxes, scores = instance_boxes(_uneven_object(), grow=0.3)
    assert boxes.tolist() == [[5, 4, 25, 16]] and scores.tolist() == [1.0]


def test_two_separate_objects_each_get_their_own_extent_at_their_own_level():
    hm = torch.zeros(20, 40)
    hm[2:10, 2:12] = 0.3
    hm[4:6, 5:7] = 1.0  # object A: peak 1.0, body 0.3 (at or above 0.3 x 1.0)
    hm[10:18, 25:38] = 0.2
    hm[12:14, 30:32] = 0.6  # object B: peak 0.6, body 0.2 (at or above 0.3 x 0.6, below 0.3 x 1.0)
    boxes, scores = instance_boxes(hm, grow=0.3, min_peak=0.5)
    assert boxes.tolist() == [[2, 2, 12, 10], [25, 10, 38, 18]]
    assert scores.tolist() == pytest.approx([1.0, 0.6])
    boxes, _ = instance_boxes(hm, grow=0.3, min_peak=0.7)  # B's peak is below 0.7 x max: no seed
    assert boxes.tolist() == [[2, 2, 12, 10]]


def test_fragments_joined_above_the_lower_peaks_level_are_one_object():
    hm = torch.zeros(12, 30)
    hm[2:10, 2:28] = 0.5  # a plateau joining two hot spots
    hm[4:6, 4:6] = 1.0
    hm[4:6, 22:24] = 0.9
    assert len(heatmap_to_boxes(hm, 0.8)[0]) == 2  # the fixed rule: two fragments
    boxes, scores = instance_boxes(hm, grow=0.4, min_peak=0.8)
    assert boxes.tolist() == [[2, 2, 28, 10]] and scores.tolist() == [1.0]


def _interleaved_combs() -> torch.Tensor:
    """Two combs that never touch (8-connectivity) but whose boxes overlap with IoU 112 / 212 = 0.53."""
    hm = torch.zeros(20, 12)
    hm[0, 0:9] = 1.0
    for col in (0, 4, 8):
        hm[0:18, col] = 1.0
    hm[19, 2:11] = 0.9
    for col in (2, 6, 10):
        hm[2:20, col] = 0.9
    return hm


def test_non_maximum_suppression_drops_a_box_overlapping_a_better_one():
    hm = _interleaved_combs()
    boxes, _ = instance_boxes(hm, grow=0.5, min_peak=0.5, nms_iou=0.6)
    assert boxes.tolist() == [[0, 0, 9, 18], [2, 2, 11, 20]]
    boxes, _ = instance_boxes(hm, grow=0.5, min_peak=0.5, nms_iou=0.5)
    assert boxes.tolist() == [[0, 0, 9, 18]]
    assert instance_boxes(hm, grow=0.5, min_peak=0.5, nms_iou=0.6, max_boxes=1)[0].tolist() == [[0, 0, 9, 18]]


@pytest.mark.parametrize("hm", [torch.zeros(5, 5), torch.full((4, 4), float("nan")), torch.zeros(0, 3),
                                -torch.ones(3, 3)])
def test_a_map_with_no_usable_peak_gives_no_box(hm):
    boxes, scores = instance_boxes(hm)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("kwargs", [{"grow": 1.5}, {"min_peak": -0.1}, {"nms_iou": 2.0}, {"max_boxes": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        instance_boxes(torch.rand(4, 4), **kwargs)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        instance_boxes(torch.rand(2, 4, 4))
