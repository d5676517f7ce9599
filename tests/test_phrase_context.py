"""Phrases read inside their caption (issue 31 item 5; Akbari et al.'s Flickr30K protocol): word spans mapped onto
MiniLM's word units, the phrase's vectors gathered from the caption's encoding, and the maps and evaluation
built on them."""

import json
from pathlib import Path

import pytest
import torch

from weakground.cli import main
from weakground.config import BackboneConfig
from weakground.data.readers import read_dataset
from weakground.data.scenes import SceneSpec, write_scenes
from weakground.engine.phrase_eval import _query_maps, evaluate_phrase_grounding
from weakground.errors import WeakgroundError
from weakground.methods import InferenceSettings, create_method
from weakground.methods.phrase_context import unit_spans, words_in_context
from weakground.text.minilm import MiniLM

FLICKR = f"flickr30k_entities:{Path(__file__).parent / 'fixtures' / 'flickr30k_entities'}"
RGB = BackboneConfig(in_channels=3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("scenes")  # 4 test images of 72-96 px (the Flickr fixture's are below 32 px)
    write_scenes(root, SceneSpec(min_size=72, max_size=96, seed=1), 0, 0, 4, 0)
    return f"flickr30k_entities:{root}"


@pytest.fixture(scope="module")
def tokenizer():
    return MiniLM().tokenizer


def make(name, shift_average=1, input_size=None, **params):
    torch.manual_seed(0)
    small = {"multilevel": {"dim": 16, "levels": ["c3", "c5"]}, "matchmap": {"dim": 16, "image_hidden": 8}}[name]
    return create_method(name, RGB, [], {**small, **params},
                         inference=InferenceSettings(input_size, shift_average)).eval()


def test_unit_spans_hand_made(tokenizer):
    # units: a | man ' s -> man, s | t - shirt -> t, shirt | , -> none | red: a=0 man=1 s=2 t=3 shirt=4 red=5
    sentence = "a man's t-shirt , red"
    assert unit_spans(tokenizer, [sentence], [(0, 1, 3), (0, 0, 1), (0, 3, 4), (0, 4, 5)], [6]) == \
        [(0, 1, 5), (0, 0, 1), (0, 5, 5), (0, 5, 6)]
    # cut to the units the encoder kept (MiniLM truncates): a span past the cut is empty
    assert unit_spans(tokenizer, [sentence], [(0, 4, 5), (0, 1, 3)], [2]) == [(0, 2, 2), (0, 1, 2)]
    with pytest.raises(ValueError, match="does not lie"):
        unit_spans(tokenizer, [sentence], [(0, 3, 6)], [6])
    with pytest.raises(RuntimeError, match="word units"):
        unit_spans(tokenizer, ["red"], [(0, 0, 1)], [2])


def test_words_in_context_gathers_the_caption_rows_and_encodes_empty_spans_alone(tokenizer):
    def encode(texts):  # each word unit's vector: [text number, unit position]; every text recorded
        calls.append(list(texts))
        n = [max(1, len(t.replace(",", " ").split())) for t in texts]  # like MiniLM, never a text without a unit
        words = torch.tensor([[[float(i), float(j)] for j in range(max(n))] for i in range(len(texts))])
        return words, torch.tensor([[j < k for j in range(max(n))] for k in n])

    calls = []
    sentences = ["the red circle , left", "two stars"]
    words, mask = words_in_context(encode, tokenizer, sentences, [(0, 1, 3), (1, 0, 2), (0, 3, 4)])
    assert mask.tolist() == [[True, True], [True, True], [True, False]]
    assert words[0].tolist() == [[0.0, 1.0], [0.0, 2.0]]  # "red circle": units 1-2 of caption 0
    assert words[1].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    # "," has no unit: encoded alone (the fake encoder gives it one word, text 0 of the second call)
    assert calls == [sentences, [","]] and words[2, 0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", ["multilevel", "matchmap"])
def test_a_span_over_the_whole_caption_is_the_caption_asked_alone(name):
    # multilevel's heatmap: words (the combination in-context maps use) makes the two exactly comparable
    model = make(name, **({"heatmap": "words"} if name == "multilevel" else {}))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    sentence = "a red circle to the left of a blue square"
    got = model.heatmaps_in_context(images, [sentence, "two stars"], [(0, 0, 10), (1, 0, 2)])
    want = model.heatmaps(images, [sentence, "two stars"])
    assert got.shape == want.shape == (2, 2) + want.shape[2:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["multilevel", "matchmap"])
def test_shift_averaged_in_context_maps_follow_grounding_maps(name):
    model = make(name, shift_average=2, **({"heatmap": "words"} if name == "multilevel" else {}))
    image = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    sentence = "the striped triangle above two green stars"
    got = model.grounding_maps_in_context(image, [sentence], [(0, 0, 7)])
    want = model.grounding_maps(image, [sentence])
    assert got.shape == want.shape == (1, 1, 64, 80)  # shifted copies: the image's resolution
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_phrase_inside_its_caption_differs_from_the_phrase_alone():
    model = make("multilevel", heatmap="words")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    inside = model.heatmaps_in_context(image, ["a red circle next to a blue square"], [(0, 5, 8)])
    alone = model.heatmaps(image, ["a blue square"])
    assert not torch.allclose(inside, alone, atol=1e-4)  # "blue square" read with its caption's context


def test_query_maps_keep_the_query_order_and_ask_objects_alone(scenes):
    model = make("matchmap")
    record = read_dataset(scenes, "test").records[0]
    image = torch.rand(1, 3, record.height, record.width, generator=torch.Generator().manual_seed(4))
    phrases = [p for c in record.captions for p in c.phrases]
    maps = _query_maps(model, image, record, 2, "sentence")  # phrase_batch 2: several calls per image
    alone = _query_maps(model, image, record, 64, "phrase")
    assert len(maps) == len(alone) == len(phrases)
    for p, got, first in zip(phrases, maps, alone):
        caption = next(c.text for c in record.captions if p in c.phrases)
        span = (0, p.first_word_index, p.first_word_index + len(p.text.split()))
        want = model.grounding_maps_in_context(image, [caption], [span])[0, 0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert got.shape == first.shape


def test_eval_records_the_phrase_context_and_refuses_methods_that_read_phrases_alone(scenes):
    model = make("matchmap")
    report = evaluate_phrase_grounding(model, scenes, "test", phrase_context="sentence")
    alone = evaluate_phrase_grounding(model, scenes, "test")
    assert report["protocol"]["phrase_context"] == "sentence" and alone["protocol"]["phrase_context"] == "phrase"
    assert report["n_queries"] == alone["n_queries"] > 0 and report["n_images"] == 4
    center = create_method("center", RGB, [], {})
    with pytest.raises(WeakgroundError, match="encodes phrases only on their own"):
        evaluate_phrase_grounding(center, FLICKR, "all", phrase_context="sentence")
    with pytest.raises(WeakgroundError, match="phrase_context must be"):
        evaluate_phrase_grounding(model, FLICKR, "all", phrase_context="caption")


def test_cli_flags_reach_the_protocol(tmp_path, capsys):
    code = main(["eval", "--no-progress", "--method", "center", "--data", FLICKR, "--phrase-context", "sentence"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "encodes phrases only on their own" in err
    out = tmp_path / "report.json"
    assert main(["eval", "--no-progress", "--method", "center", "--data", FLICKR, "--retrieval", "score",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"]["retrieval"] == "score"
