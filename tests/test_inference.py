"""The inference layer (weakground.engine.inference) and the public API (weakground.load): one loop from maps to
points and boxes, one phrase check, images from paths, PIL images and arrays, loading by name or checkpoint."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from weakground.engine.inference import (MAX_PHRASE_CHARS, Grounding, Predictor, as_image_array, check_phrases,
                                         ground_maps, load)
from weakground.errors import InputError, WeakgroundError


def test_ground_maps_takes_the_first_argmax_and_thresholded_components():
    maps = torch.zeros(2, 6, 8)
    maps[0, 1:3, 2:4] = 1.0  # a 2x2 block: peak at (x=2, y=1), the first in raster order
    maps[0, 4, 6] = 0.6  # a second component above 0.5 x peak
    maps[1, 5, 7] = 0.2  # a single pixel, at the last position
    a, b = ground_maps(maps, ["a", "b"], threshold=0.5)
    assert isinstance(a, Grounding) and a.phrase == "a" and a.point == (2, 1) and a.peak == 1.0
    assert a.boxes == [(2.0, 1.0, 4.0, 3.0), (6.0, 4.0, 7.0, 5.0)]  # pixel edges, best first
    assert a.box_scores == pytest.approx([1.0, 0.6])
    assert b.point == (7, 5) and b.boxes == [(7.0, 5.0, 8.0, 6.0)] and b.heatmap.shape == (6, 8)
    assert a.to_dict() == {"phrase": "a", "point": [2, 1], "peak": 1.0, "boxes": [[2.0, 1.0, 4.0, 3.0],
                           [6.0, 4.0, 7.0, 5.0]], "box_scores": pytest.approx([1.0, 0.6]),
                           "presence": None, "found": None}  # ground_maps alone knows no presence


def test_an_empty_map_has_a_point_but_no_box():
    (g,) = ground_maps(torch.zeros(1, 4, 4), ["nothing"], 0.5)
    assert g.point == (0, 0) and g.peak == 0.0 and g.boxes == [] and g.box_scores == []
    assert g.found is False  # a flat map points nowhere: "not found", even for an uncalibrated method


def test_a_flat_map_is_not_found_even_when_its_presence_is_high():
    from weakground.metrics import PresenceCalibration

    predictor = load("center")
    predictor.calibration = PresenceCalibration(1.0, 0.0)
    maps = torch.full((2, 4, 4), 0.7)
    maps[1, 2, 3] = 0.9
    flat, peaked = predictor.ground(np.zeros((4, 4, 3), np.uint8), maps, ["blank", "spot"], 0.9, [5.0, 5.0])
    assert flat.found is False and flat.boxes == [] and flat.presence > 0.99
    assert peaked.found is True and peaked.boxes == [(3.0, 2.0, 4.0, 3.0)]


def test_instance_boxes_cover_each_object_where_a_threshold_cuts_one_away():
    from weakground.engine.inference import INSTANCE_RULE

    hm = torch.zeros(1, 10, 20)
    hm[0, 1:5, 1:6] = 0.5  # object 1: its body ...
    hm[0, 2, 2] = 1.0  # ... and its hot spot
    hm[0, 6:9, 12:18] = 0.4  # object 2, weaker everywhere
    (threshold,) = ground_maps(hm, ["x"], threshold=0.6)
    (instance,) = ground_maps(hm, ["x"], threshold=INSTANCE_RULE)
    assert threshold.boxes == [(2.0, 2.0, 3.0, 3.0)]  # only the hot spot survives 0.6 x peak
    assert instance.boxes == [(1.0, 1.0, 6.0, 5.0)]  # object 2 peaks at 0.4 < min_peak 0.5 x the maximum
    assert instance.point == threshold.point == (2, 2)


def test_box_rule_defaults_and_one_line_errors():
    predictor = load("center")
    assert predictor.default_boxes == "threshold" and predictor.box_rule().kind == "threshold"
    assert predictor.box_rule(boxes="instance").kind == "instance"
    assert predictor.box_rule(0.3).threshold == 0.3 and predictor.box_rule().threshold == 0.5
    with pytest.raises(InputError, match="applies to threshold boxes"):
        predictor.box_rule(0.3, "instance")
    with pytest.raises(InputError, match="must be one of threshold, instance"):
        predictor.box_rule(boxes="polygons")


@pytest.mark.parametrize("phrase", ["the", "of it", "!!!", "and then", "...?"])
def test_a_phrase_with_no_content_word_is_refused(phrase):
    with pytest.raises(InputError, match="has no word that names something"):
        check_phrases(["the cat", phrase])


def test_content_words_in_any_script_and_digits_pass():
    assert check_phrases(["3", "東京タワー", "two dogs", "café"]) == ["3", "東京タワー", "two dogs", "café"]


@pytest.mark.parametrize("phrases, message", [
    ([], "no phrase to ground"), (["a dog", "  "], "phrase 2 is empty"),
    (["x" * (MAX_PHRASE_CHARS + 1)], "characters long"), (["a\x00dog"], "control characters"),
    (["a"] * 5, "5 phrases; the limit is 4")])
def test_check_phrases_refuses_with_one_line(phrases, message):
    with pytest.raises(InputError, match=message):
        check_phrases(phrases, max_phrases=4)


def test_check_phrases_normalises_whitespace():
    assert check_phrases(["  the   red\tcar ", "a dog"]) == ["the red car", "a dog"]


def test_images_from_a_path_a_pil_image_and_arrays_agree(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    from_path, label = as_image_array(path, 3)
    assert label == str(path) and np.array_equal(from_path, rgb)
    assert np.array_equal(as_image_array(Image.open(path), 3)[0], rgb)
    assert np.array_equal(as_image_array(rgb, 3)[0], rgb)
    grey = as_image_array(rgb, 1)[0]
    assert grey.shape == (20, 30) and grey.dtype == np.uint8
    rgba = Image.fromarray(np.zeros((4, 4, 4), np.uint8))  # fully transparent: composited on white
    assert (as_image_array(rgba, 3)[0] == 255).all()
    with pytest.raises(InputError, match="uint8"):
        as_image_array(rgb.astype(np.float32), 3)
    with pytest.raises(InputError, match="cannot read an image from a list"):
        as_image_array([1, 2], 3)


def test_locate_equals_heatmaps_resized_and_grounded():
    from weakground.metrics import resize_heatmap

    g = load("center")
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    found = g.locate(image, ["a thing", "another"], threshold=0.3)
    maps = g.heatmaps(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, ["a thing", "another"])
    expected = ground_maps(resize_heatmap(maps, (40, 60))[0], ["a thing", "another"], 0.3)
    assert [f.to_dict() for f in found] == [e.to_dict() for e in expected]
    assert found[0].heatmap.shape == (40, 60) and found[0].point == (30, 20)  # the centre baseline
    with pytest.raises(InputError, match=r"threshold 1.5: must lie in \[0, 1\]"):
        g.locate(image, ["x"], threshold=1.5)


def test_load_by_name_refuses_learned_and_unknown_methods(tmp_path):
    with pytest.raises(WeakgroundError, match="must be trained first: pass --checkpoint"):
        load("multilevel")
    with pytest.raises(WeakgroundError, match="unknown method .no_such_method.; known: .*bridge"):
        load("no_such_method")
    with pytest.raises(WeakgroundError, match="checkpoint not found"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(WeakgroundError, match="only method.params.KEY=VALUE applies to --method center"):
        load("center", overrides=["train.epochs=3"])
    g = load("center", overrides=["method.params.sigma=0.1"])
    assert isinstance(g, Predictor) and g.model.config.sigma == 0.1 and g.box_threshold == 0.5


def test_retrieval_needs_a_joint_space():
    with pytest.raises(InputError, match="no joint image-text space"):
        load("center").rank_captions(np.zeros((32, 32, 3), np.uint8), ["a caption"])


def test_the_public_api_is_lazy_and_is_the_inference_layer():
    import weakground

    assert weakground.load is load and weakground.Grounding is Grounding
    probe = "import sys, weakground; print('torch' in sys.modules, callable(weakground.load), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]  # import weakground: no torch; weakground.load: torch comes with it
