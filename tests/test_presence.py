"""Presence: Platt calibration on hand-checked cases, absent phrases that never name what the image shows, and
the eval harness's presence AUROC on a method whose evidence is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from weakground.data.readers import read_dataset
from weakground.engine.phrase_eval import _absent_phrases, _head, _phrase_pool, evaluate_phrase_grounding
from weakground.methods.center import CenterBaseline, CenterConfig
from weakground.metrics import PresenceCalibration, fit_platt

FLICKR = f"flickr30k_entities:{Path(__file__).parent / 'fixtures' / 'flickr30k_entities'}"


def test_platt_fit_on_symmetric_overlapping_scores_is_centred_and_monotone():
    present, absent = np.array([0.5, 1.0, 2.0, -0.2]), np.array([-0.5, -1.0, -2.0, 0.2])
    cal = fit_platt(present, absent)
    assert cal.probability(0.0) == pytest.approx(0.5, abs=1e-6)  # symmetric sets: the boundary at 0
    assert cal.scale > 0 and cal.probability(2.0) > 0.8 > 0.2 > cal.probability(-2.0)
    # the fit is the maximum of the class-balanced log-likelihood: a nudge of either parameter lowers it
    def loglik(a, b):
        p = lambda s: 1 / (1 + np.exp(-(a * s + b)))  # noqa: E731
        return np.mean(np.log(p(present))) + np.mean(np.log(1 - p(absent)))
    best = loglik(cal.scale, cal.bias)
    for da, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert loglik(cal.scale + da, cal.bias + db) < best + 1e-9


def test_platt_fit_is_bounded_on_separable_scores_and_refuses_empty_sets():
    cal = fit_platt(np.array([3.0, 4.0]), np.array([0.0, 1.0]))
    assert np.isfinite(cal.scale) and cal.probability(4.0) > 0.99 and cal.probability(0.0) < 0.01
    with pytest.raises(ValueError):
        fit_platt(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        fit_platt(np.array([np.nan]), np.array([1.0]))


def test_calibration_round_trips_through_a_config_list():
    cal = PresenceCalibration(2.0, -1.0, 0.6)
    assert PresenceCalibration.from_list(cal.to_list()) == cal
    assert PresenceCalibration.from_list([]) is None
    assert PresenceCalibration.from_list([2.0, -1.0]).threshold == 0.5
    with pytest.raises(ValueError):
        PresenceCalibration.from_list([1.0])
    assert PresenceCalibration(1.0, 0.0).probability(-1000.0) == pytest.approx(0.0)  # no overflow


def test_absent_phrases_share_no_head_noun_with_the_image_and_are_seeded():
    records = read_dataset(FLICKR, "all").records
    pool = _phrase_pool(records)
    present = ["A dog", "The dog", "a post"]
    absent = _absent_phrases(present, pool, seed=3)
    assert len(absent) == 3 and absent == _absent_phrases(present, pool, seed=3)
    assert not {_head(a) for a in absent} & {"dog", "post"}


class _KnowsItsImages(CenterBaseline):
    """Presence 1 for a phrase of the fixture's image 100 when asked of image 100 (40 x 30), 0.5 for image 200's
    own phrases, 0 otherwise: a perfect ranking within each image."""

    own = {(30, 40): {"man", "a red shirt", "two cups", "The performer", "A guy", "cups"},
           (40, 50): {"A dog", "The dog", "a post"}}

    def presence_scores(self, images, phrases):
        own = self.own[tuple(images.shape[-2:])]
        level = 1.0 if images.shape[-2] == 30 else 0.5
        return torch.tensor([[level if p in own else 0.0 for p in phrases]])


def test_eval_reports_presence_auroc_over_present_and_drawn_absent_phrases():
    report = evaluate_phrase_grounding(_KnowsItsImages(CenterConfig()), FLICKR, "test")
    presence = report["presence"]
    # present: image 100's 6 distinct texts, image 200's 3. Absent: the test split's other image has only 3
    # phrases to lend image 100 (none sharing a head with it), and image 200 takes 3 of image 100's 6
    assert presence["n_present"] == 9 and presence["n_absent"] == 6
    assert presence["auroc"] == 1.0


def test_locate_says_not_found_for_a_phrase_absent_from_a_real_photo():
    from skimage import data as skdata  # noqa: F401  (the photo ships in scikit-image)
    from weakground.engine.inference import load

    cat, dog = load("bridge").locate(skdata.chelsea(), ["the cat", "a dog"])
    assert cat.found is True and dog.found is False
    assert 0.0 <= dog.presence < 0.5 <= cat.presence <= 1.0
    assert cat.to_dict()["found"] is True and dog.heatmap.shape == (300, 451)  # the map is still given


def test_an_uncalibrated_method_reports_no_presence():
    from weakground.engine.inference import load

    (g,) = load("center").locate(np.zeros((32, 32, 3), np.uint8), ["anything"])
    assert g.presence is None and g.found is None


@pytest.mark.parametrize("fill", ["gray", "noise"])
def test_an_image_with_no_object_finds_nothing(fill):
    from weakground.engine.inference import load

    rng = np.random.default_rng(0)
    image = (np.full((240, 320, 3), 128, np.uint8) if fill == "gray"
             else rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    found = load("bridge").locate(image, ["the cat", "a car", "a bus"])
    assert [g.found for g in found] == [False, False, False], [g.presence for g in found]
