"""Label-grounding evaluation against ink or patch boxes, on an oracle whose maps are known exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from weakground.config import EvalConfig
from weakground.data.multimnist import MultiMnistSpec, make_multimnist
from weakground.engine.evaluate import evaluate_label_grounding
from weakground.errors import ConfigError


class PatchOracle(torch.nn.Module):
    """Heatmap of class c: 1 inside the patch box of every digit c in the image, 0 elsewhere."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.dataset = dataset
        self.class_names = [str(c) for c in range(10)]
        self.seen = 0

    def grounding_maps(self, images: torch.Tensor, names: list[str]) -> torch.Tensor:
        b, _, h, w = images.shape
        maps = torch.zeros(b, len(names), h, w)
        for k in range(b):
            i = self.seen + k
            for (x1, y1, x2, y2), c in zip(self.dataset.patch_boxes[i].astype(int), self.dataset.labels[i]):
                maps[k, c, y1:y2, x1:x2] = 1.0
        self.seen += b
        return maps


@pytest.fixture(scope="module")
def scenes():
    return make_multimnist(MultiMnistSpec(noise_std=0.0), 12, pool="test", seed=5)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _component_box(seed: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Box of the 8-connected union of patches that touch ``seed`` (grid cells side by side touch)."""
    box = seed.copy()
    changed = True
    while changed:
        changed = False
        for p in patches:
            touches = p[0] <= box[2] and box[0] <= p[2] and p[1] <= box[3] and box[1] <= p[3]
            grown = np.array([min(box[0], p[0]), min(box[1], p[1]), max(box[2], p[2]), max(box[3], p[3])])
            if touches and not np.array_equal(grown, box):
                box, changed = grown, True
    return box


def _expected_avg_iou(scenes, truth: list[np.ndarray]) -> float:
    """By hand: the box around the oracle's peak is the union of the queried class's patches that touch the
    first one (argmax takes the first maximal pixel in row-major order, and grid cells side by side or corner to
    corner are 8-connected); its IoU is the best over that class's ``truth`` boxes."""
    ious = []
    for i in range(len(scenes)):
        for c in np.unique(scenes.labels[i]):
            mine = scenes.labels[i] == c
            component = _component_box(scenes.patch_boxes[i][mine][0], scenes.patch_boxes[i][mine])
            ious.append(max(_iou(component, b) for b in truth[i][mine]))
    return 100.0 * float(np.mean(ious))


def test_patch_oracle_scored_by_hand_against_patches_and_ink(scenes):
    config = EvalConfig(box_threshold=0.5, batch_size=5)
    patch = evaluate_label_grounding(PatchOracle(scenes), scenes, dataclasses.replace(config, ground_truth="patch"))
    assert patch["protocol"]["ground_truth_boxes"].startswith("the 28x28 patch")
    # abs=1e-4: the library computes IoU in float32
    assert patch["avg_iou"] == pytest.approx(_expected_avg_iou(scenes, scenes.patch_boxes), abs=1e-4)
    ink = evaluate_label_grounding(PatchOracle(scenes), scenes, config)
    assert ink["protocol"]["ground_truth_boxes"].startswith("tight box")
    assert ink["avg_iou"] == pytest.approx(_expected_avg_iou(scenes, scenes.boxes), abs=1e-4)
    assert ink["avg_iou"] < patch["avg_iou"] - 20  # ink boxes are much tighter than the patches
    assert ink["pointing_accuracy"] < patch["pointing_accuracy"] == 1.0  # the peak pixel is a patch corner


def test_unknown_ground_truth_is_a_config_error(scenes):
    with pytest.raises(ConfigError, match="eval.ground_truth must be one of ink, patch, got 'cell'"):
        evaluate_label_grounding(PatchOracle(scenes), scenes, EvalConfig(ground_truth="cell"))


def test_patch_protocol_needs_patch_boxes(scenes):
    bare = dataclasses.replace(scenes, patch_boxes=[])
    with pytest.raises(ConfigError, match="carries no patch boxes"):
        evaluate_label_grounding(PatchOracle(bare), bare, EvalConfig(ground_truth="patch"))


class AbsentBlobOracle(torch.nn.Module):
    """Class c's map: 0.5 on the ink box of the image's digit when it is c; a blob of 1.0 in the corner when c
    is absent (the confident false answer the absent-detection protocol must see)."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.dataset, self.class_names, self.seen = dataset, [str(c) for c in range(10)], 0

    def grounding_maps(self, images: torch.Tensor, names: list[str]) -> torch.Tensor:
        b, _, h, w = images.shape
        maps = torch.zeros(b, len(names), h, w)
        maps[:, :, 0:4, 0:4] = 1.0
        for k in range(b):
            i = self.seen + k
            for (x1, y1, x2, y2), c in zip(self.dataset.boxes[i].astype(int), self.dataset.labels[i]):
                maps[k, c] = 0.0
                maps[k, c, y1:y2, x1:x2] = 0.5
        self.seen += b
        return maps


def test_absent_class_blobs_are_false_positives_only_when_counted():
    one_digit = MultiMnistSpec(layout="free", canvas=56, min_digits=1, max_digits=1, noise_std=0.0)
    data = make_multimnist(one_digit, 12, pool="test", seed=3)
    ignored = evaluate_label_grounding(AbsentBlobOracle(data), data, EvalConfig(absent_detections="ignore"))
    assert ignored["ap50"] == pytest.approx(100.0) and ignored["absent_auroc"] == 0.0
    counted = evaluate_label_grounding(AbsentBlobOracle(data), data, EvalConfig())
    # Class c: G_c images show it (true positives, score 0.5), the other 12 - G_c each give one false positive
    # scored 1.0, ranked first: AP_c = G_c / 12; the mean runs over the classes that occur.
    counts = np.bincount(np.concatenate(data.labels), minlength=10)
    expected = 100.0 * np.mean([g / 12 for g in counts if g > 0])
    for key in ("ap30", "ap40", "ap50", "map"):
        assert counted[key] == pytest.approx(expected)
    assert counted["protocol"]["absent_detections"].startswith("the boxes on absent classes' maps")


def test_unknown_absent_detection_rule_is_a_config_error():
    data = make_multimnist(MultiMnistSpec(noise_std=0.0), 2, pool="test", seed=1)
    with pytest.raises(ConfigError, match="absent_detections"):
        evaluate_label_grounding(AbsentBlobOracle(data), data, EvalConfig(absent_detections="sometimes"))
