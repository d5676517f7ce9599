"""Word vocabularies for caption generation: the caption words a decoder can write, and the object words whose
grounding is scored (the GVD-style object vocabulary of Zhou et al., CVPR 2019, that Hu et al. evaluate with).

Both are built from the training captions only and saved inside a captioner's checkpoint (its config), so a
loaded model writes and scores exactly the words it was trained with.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from weakground.errors import InputError
from weakground.text.tokens import tokenize

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# Words that open a prepositional phrase after a noun phrase's head ("a sign with stripes", "a man in a hat")
PREPOSITIONS = frozenset({"with", "in", "on", "of", "at", "near", "from", "by", "behind", "under", "over", "above"})


class CaptionVocabulary:
    """Caption words <-> ids; ids 0-3 are ``<pad> <bos> <eos> <unk>``.

    Args:
        words: the vocabulary, specials first (as :meth:`build` and a checkpoint give it).
    """

    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[:4]) != SPECIALS or len(set(words)) != len(words):
            raise InputError(f"a caption vocabulary starts with {', '.join(SPECIALS)} and repeats no word")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 2) -> CaptionVocabulary:
        """Every token of ``captions`` seen at least ``min_count`` times, most frequent first (ties: alphabetical)."""
        counts = Counter(t for c in captions for t in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """``<bos> w1 .. wn <eos>`` ids, cut to ``max_len`` words; unknown words map to ``<unk>``."""
        ids = [self.index.get(t, 3) for t in tokenize(text)[:max_len]]
        return [1, *ids, 2]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first ``<eos>``, specials left out."""
        out = []
        for i in ids:
            if i == 2:
                break
            if i > 3:
                out.append(self.words[i])
        return out


def object_vocabulary(phrases: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Object word -> object class, from ``(phrase text, class)`` pairs of the training captions' entities.

    The head noun of a phrase is its last token before any prepositional phrase ("two small red donuts" ->
    "donuts", "a plus sign with stripes" -> "sign"); a word seen as the head of several classes keeps the most
    frequent (ties: alphabetical), so every generated word names one class.
    """
    votes: dict[str, Counter] = {}
    for text, cls in phrases:
        tokens = tokenize(text)
        cut = next((i for i, t in enumerate(tokens) if t in PREPOSITIONS and i > 0), len(tokens))
        if tokens[:cut] and cls:
            votes.setdefault(tokens[cut - 1], Counter())[cls] += 1
    return {w: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for w, c in sorted(votes.items())}
