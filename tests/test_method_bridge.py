"""The zero-training bridge method on real photos: interface contract and behaviour."""

import numpy as np
import pytest
import torch
from skimage import data

from weakground.errors import InputError
from weakground.io import image_to_tensor
from weakground.methods.bridge import (COLOUR_GROUPS, COLOUR_PROTOTYPES, _side_ramp, _without_strongest,
                                       colour_map, reduce_phrase)
from weakground.metrics import resize_heatmap


@pytest.mark.parametrize("phrase, head, owner, kind", [
    ("A man in a red shirt", "man", "", "person"),
    ("the cat's green eyes", "eyes", "cat", "owner"),
    ("her face", "face", "her", "person_head"),
    ("a pair of glasses", "glasses", "", "head_wear"),
    ("a cup of coffee", "cup", "", "thing"),
    ("Two dogs running on the beach", "dogs", "", "thing"),
    ("un café crème", "crème", "", "thing"),  # non-ASCII words are words
])
def test_reduce_phrase(phrase, head, owner, kind):
    r = reduce_phrase(phrase)
    assert (r.head, r.owner, r.kind) == (head, owner, kind)


def test_reduce_phrase_drops_colours_for_the_class_match():
    assert reduce_phrase("an orange spacesuit").text == "spacesuit"
    assert reduce_phrase("a coffee cup").text == "coffee cup"  # compound nouns stay
    assert reduce_phrase("a navy uniform").text == "uniform"  # every colour the colour prior reads is dropped
    assert reduce_phrase("a second bus").text == "bus"


def test_colour_map_assigns_plain_colours_to_their_group():
    image = torch.zeros(3, 32, 64)
    image[0, :, :32] = 0.8  # left half red, right half white
    image[:, :, 32:] = 0.97
    probs = colour_map(image, (8, 16), sigma=15.0)
    assert probs.shape == (len(COLOUR_PROTOTYPES), 8, 16)
    assert torch.allclose(probs.sum(0), torch.ones(8, 16), atol=1e-5)
    red, white = COLOUR_GROUPS["red"][0], COLOUR_GROUPS["white"][0]
    # Soft: pure red sits between the red and orange prototypes, pure near-white between white and light gray.
    assert (probs[:, :, :6].argmax(0) == red).all() and probs[red, :, :6].min() > 0.6
    assert (probs[:, :, 10:].argmax(0) == white).all() and probs[white, :, 10:].min() > 0.6
    gray = colour_map(image[:1], (8, 16), sigma=15.0)  # one channel is read as gray
    assert gray[red].max() < 0.1


def test_side_ramp_and_other_instance():
    ramp = _side_ramp([(1, -1)], (4, 10), 0.5)  # "left": the left column counts about double the right one
    assert ramp[0, 0] > ramp[0, -1] and 1.8 < float(ramp[0, 0] / ramp[0, -1]) <= 2.0
    heatmap = torch.zeros(6, 12)
    heatmap[2:4, 1:3] = 1.0  # the strongest instance
    heatmap[2:4, 8:10] = 0.6  # a second, weaker one
    other = _without_strongest(heatmap, 0.5)
    assert int(other.argmax()) % 12 >= 8 and float(other.max()) == 1.0
    single = torch.zeros(6, 12)
    single[2, 2] = 1.0
    assert torch.equal(_without_strongest(single, 0.5), single)  # nothing else there: kept as it is


def test_side_and_another_words_move_the_point(bridge_model):
    bike = data.stereo_motorcycle()[0]  # 500 x 741: two wheels, the bike filling the width
    maps = bridge_model.heatmaps(image_to_tensor(bike), ["a wheel", "the wheel on the left",
                                                         "the wheel on the right", "another wheel"])[0]
    xs = [_peak(hm, bike.shape[:2])[0] for hm in maps]
    assert xs[1] < 741 / 2 < xs[2]
    assert abs(xs[3] - xs[0]) > 741 / 4  # the other wheel, not the first one again


def test_heatmaps_shape_range_on_a_real_photo(bridge_model):
    images = image_to_tensor(data.astronaut())
    maps = bridge_model.heatmaps(images, ["a woman", "a space shuttle", "an American flag"])
    assert maps.shape[:2] == (1, 3) and maps.shape[-1] >= 14
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert torch.allclose(maps.amax(dim=(-2, -1)), torch.ones(1, 3))  # each map's peak is 1


def test_grayscale_and_odd_sizes_work(bridge_model):
    gray = image_to_tensor(data.camera()[:301, :417])  # [1, 1, 301, 417]
    maps = bridge_model.heatmaps(gray, ["a tripod"])
    assert maps.shape[:2] == (1, 1) and (maps >= 0).all()


def _peak(hm, size):
    full = resize_heatmap(hm, size)
    y, x = divmod(int(full.argmax()), size[1])
    return x, y


def test_cup_phrase_peaks_inside_the_cup_box(bridge_model):
    coffee = data.coffee()  # 400 x 600; the demo set's hand-drawn cup box is x 170..410, y 15..300
    hm = bridge_model.heatmaps(image_to_tensor(coffee), ["a cup"])[0, 0]
    x, y = _peak(hm, coffee.shape[:2])
    assert 170 <= x < 410 and 15 <= y < 300


def test_cat_phrase_peaks_inside_the_cat(bridge_model):
    cat = data.chelsea()  # 300 x 451: the cat fills the photo, so it is paired with another photo
    # Side by side with the coffee photo the two phrases must point at different halves: a real behavioural
    # check that the map follows the phrase, not the image's most salient spot.
    coffee = np.asarray(data.coffee()[50:350, 75:526])  # 300 x 451, the cup in the middle
    both = np.concatenate([cat, coffee], axis=1)  # 300 x 902: cat on the left
    maps = bridge_model.heatmaps(image_to_tensor(both), ["a tabby cat", "a cup of coffee"])[0]
    cat_x, _ = _peak(maps[0], both.shape[:2])
    cup_x, _ = _peak(maps[1], both.shape[:2])
    assert cat_x < 451 <= cup_x


def test_bad_phrases_and_training_are_clear_errors(bridge_model):
    images = image_to_tensor(data.chelsea())
    with pytest.raises(InputError, match="no words"):
        bridge_model.heatmaps(images, ["  ?! "])
    with pytest.raises(InputError, match="no training"):
        bridge_model.loss({})
    long = bridge_model.heatmaps(images, ["cat " * 2500])  # 10,000 characters: cut to its first words
    assert torch.isfinite(long).all()
