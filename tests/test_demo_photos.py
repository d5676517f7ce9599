"""The demo set reads through the ordinary Flickr30K Entities reader with the expected counts and geometry."""

from weakground.data.demo_photos import read_demo
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
