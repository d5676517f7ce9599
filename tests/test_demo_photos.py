"""The demo sets (tuning and held-out) read through the ordinary Flickr30K Entities reader with the expected counts and geometry."""

import os

import pytest

from weakground.data.demo_photos import LABELME_EXAMPLES, demo_photo_names, read_demo, reader_split, split_sources
from weakground.errors import WeakgroundError
from weakground.io import read_image


def test_demo_set_reads_with_expected_counts(tmp_path):
    result = read_demo(tmp_path / "demo")
    assert not [p for p in result.problems if not p.by_design]
    assert len(result.records) == 9
    phrases = [p for r in result.records for c in r.captions for p in c.phrases]
    assert len(phrases) == 57
    assert {t for p in phrases for t in p.phrase_types} >= {"people", "clothing", "animals", "vehicles", "other"}
    for record in result.records:
        image = read_image(record.path)
        assert image.shape[:2] == (record.height, record.width), record.image_id  # sizes in the XML are right
        for caption in record.captions:
            for phrase in caption.phrases:
                for box in phrase.boxes:
                    assert 0 <= box.x1 < box.x2 <= record.width and 0 <= box.y1 < box.y2 <= record.height


def _heldout_or_skip(tmp_path):
    """The held-out split needs Debian's labelme-examples; CI installs it, so only a local run may skip."""
    if not LABELME_EXAMPLES.is_dir() and not os.environ.get("CI"):
        pytest.skip("held-out photos need the Debian package labelme-examples (apt-get install labelme-examples)")
    return read_demo(tmp_path / "heldout", split="heldout")


def test_heldout_split_reads_strictly_with_boxes_inside_each_photo(tmp_path):
    result = _heldout_or_skip(tmp_path)
    assert not [p for p in result.problems if not p.by_design]
    assert len(result.records) == 9
    phrases = [p for r in result.records for c in r.captions for p in c.phrases]
    assert len(phrases) == 46  # mentions; a repeated entity ("The dog") is one more query, as in Flickr30K
    assert {t for p in phrases for t in p.phrase_types} >= {"people", "clothing", "animals", "vehicles",
                                                           "bodyparts", "other"}
    for record in result.records:
        image = read_image(record.path, channels=3)
        assert image.shape[:2] == (record.height, record.width), record.image_id
        for phrase in (p for c in record.captions for p in c.phrases):
            assert phrase.boxes, (record.image_id, phrase.text)  # every query can be scored
            for box in phrase.boxes:
                assert 0 <= box.x1 < box.x2 <= record.width and 0 <= box.y1 < box.y2 <= record.height


def test_heldout_split_is_disjoint_from_the_tuning_set():
    tuning, heldout = split_sources("tuning"), split_sources("heldout")
    assert set(tuning) == set(demo_photo_names())  # the web app and `locate --demo` list the tuning photos only
    assert not set(tuning) & set(heldout)
    assert not set(tuning.values()) & set(heldout.values())  # no photo under two names
    # motorcycle_right is the stereo twin of the tuning set's motorcycle_left: not independent, so not held out
    assert "skimage:motorcycle_right" not in heldout.values()


def test_split_names_are_checked(tmp_path):
    assert reader_split("tuning") == "test" and reader_split("heldout") == "heldout"
    with pytest.raises(WeakgroundError, match="unknown demo split"):
        read_demo(tmp_path / "x", split="validation")
