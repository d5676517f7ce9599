"""Caption and object vocabularies (weakground.text.vocab) and beam search (weakground.methods.beam_search)."""

import pytest
import torch

from weakground.errors import InputError
from weakground.methods.beam_search import beam_search
from weakground.text.vocab import SPECIALS, CaptionVocabulary, object_vocabulary


def test_vocabulary_keeps_frequent_words_in_order_and_round_trips():
    vocab = CaptionVocabulary.build(["a red circle", "a blue circle", "a red star ."], min_count=2)
    assert vocab.words == [*SPECIALS, "a", "circle", "red"]  # by count, then alphabetical; "." is not a word
    assert vocab.encode("A red square", max_len=10) == [1, 4, 6, 3, 2]  # <bos> a red <unk> <eos>
    assert vocab.encode("a red circle", max_len=2) == [1, 4, 6, 2]  # cut to max_len words
    assert vocab.decode([4, 6, 3, 5, 2, 4]) == ["a", "red", "circle"]  # specials dropped, stops at <eos>
    with pytest.raises(InputError, match="starts with"):
        CaptionVocabulary(["a", "b"])


def test_object_vocabulary_maps_head_nouns_to_their_majority_class():
    pairs = [("two small red donuts", "ring"), ("a ring", "ring"), ("the donuts", "ring"), ("a plus sign", "cross"),
             ("two signs", "circle"), ("the sign", "cross"), ("", "ring"), ("a thing", ""),
             ("a purple plus sign with stripes", "cross")]
    assert object_vocabulary(pairs) == {"donuts": "ring", "ring": "ring", "sign": "cross", "signs": "circle"}
    # the head before "with stripes": "stripes" names no object


class ScriptedDecoder:
    """A decoder whose next-word log-probabilities depend only on the previous word, from a fixed table."""

    def __init__(self, table):
        self.table = torch.log(torch.tensor(table))

    def initial_state(self, n, like):
        return (like.new_zeros(n, 1),)

    def step(self, words, state, regions):
        k = regions["valid"].shape[1]
        gamma = torch.nn.functional.one_hot(words % k, k).float()  # "attends" region (word mod K)
        return self.table[words], gamma, state


def _regions(b, k=3):
    return {"valid": torch.ones(b, k, dtype=torch.bool), "mean": torch.zeros(b, 2)}


def test_beam_search_finds_the_best_sequence_greedy_misses():
    # words: 0 pad, 1 bos, 2 eos, 3 "x", 4 "y". Greedy from <bos> takes x (0.5) then must end with 0.2 left;
    # y (0.4) then <eos> (1.0) scores 0.4 > 0.5 * 0.3 (x, x, eos is 0.5 * 0.6 * ...).
    table = [[1, 1, 1, 1, 1],                   # from pad (unused)
             [0.0, 0.0, 0.1, 0.5, 0.4],          # from <bos>
             [0.2, 0.2, 0.2, 0.2, 0.2],          # from <eos> (unused)
             [0.0, 0.0, 0.3, 0.1, 0.6],          # from x
             [0.0, 0.0, 1.0, 0.0, 0.0]]          # from y
    table = [[max(v, 1e-9) for v in row] for row in table]
    model = ScriptedDecoder(table)
    (greedy_ids, _), = beam_search(model, _regions(1), beam=1, max_len=5)
    (beam_ids, beam_gamma), = beam_search(model, _regions(1), beam=3, max_len=5)
    assert greedy_ids == [3, 4]  # x (0.5), y (0.6), <eos> (1.0): 0.30
    assert beam_ids == [4]  # y (0.4), <eos> (1.0): 0.40, the best
    assert beam_gamma.shape == (1, 3) and int(beam_gamma[0].argmax()) == 1  # y was written attending region 1


def test_beam_search_stops_at_max_len_and_handles_a_batch():
    # a chain <bos> -> 3 -> 4 -> 5 -> 6 -> 7 whose <eos> gets likelier down the chain: the best caption is as long
    # as allowed, and the fifth word (7) is never written because max_len is 4
    eos = {3: 1e-9, 4: 1e-8, 5: 1e-7, 6: 1e-6, 7: 1e-5}
    table = [[1e-9] * 8 for _ in range(8)]
    table[1][3] = 1.0
    for word, nxt in ((3, 4), (4, 5), (5, 6), (6, 7), (7, 7)):
        table[word][nxt], table[word][2] = 1.0, eos[word]
    out = beam_search(ScriptedDecoder(table), _regions(2), beam=2, max_len=4)
    assert [ids for ids, _ in out] == [[3, 4, 5, 6], [3, 4, 5, 6]]
