"""Query encoders for label-level grounding: a one-hot label, or a short phrase naming the label.

Fang et al. feeds a one-hot class label through a 128-unit dense layer. To compare it later with methods that read
language, the same model can instead read a phrase ("the digit seven", "a 7") through a small bag-of-words
encoder over the label's words. Both map a list of strings to a tensor of query vectors, so training and
inference go through one path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weakground.errors import InputError
from weakground.text.tokens import tokenize

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Phrasings used to train and test the phrase encoder; {d} is the numeral, {w} the word.
PHRASE_TEMPLATES = [
    "{d}", "{w}", "digit {d}", "the digit {w}", "number {d}", "the number {w}",
    "a handwritten {w}", "the {w}", "a {d}", "handwritten digit {d}",
]

def label_phrase(label: int, class_names: list[str], template: int) -> str:
    """The phrase for ``label`` under template number ``template`` (digits get numeral and word forms)."""
    name = class_names[label]
    word = DIGIT_WORDS[int(name)] if name.isdigit() and int(name) < 10 else name
    return PHRASE_TEMPLATES[template % len(PHRASE_TEMPLATES)].format(d=name, w=word)


class OneHotQuery(nn.Module):
    """Exact class name (or its word form, e.g. "7" or "seven") -> one-hot vector over the classes."""

    def __init__(self, class_names: list[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.out_dim = len(class_names)
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.class_names):
            self._index[name.lower()] = i
            if name.isdigit() and int(name) < 10:
                self._index[DIGIT_WORDS[int(name)]] = i

    def label_index(self, phrase: str) -> int:
        key = " ".join(tokenize(phrase))
        if key not in self._index:
            raise InputError(f"unknown label {phrase!r}; known labels: {', '.join(self.class_names)}")
        return self._index[key]

    def forward(self, phrases: list[str]) -> Tensor:
        """``phrases`` (P strings) -> one-hot ``[P, n_classes]``."""
        idx = torch.tensor([self.label_index(p) for p in phrases], dtype=torch.long)
        return nn.functional.one_hot(idx, self.out_dim).float()


class BagOfWordsQuery(nn.Module):
    """Phrase -> mean of learned word embeddings over a fixed vocabulary (unknown words share one vector).

    The vocabulary is the class names, their word forms and the template words, so every training phrase is
    covered while a user's unseen word still gets a (learned) unknown-word vector rather than an error.
    """

    def __init__(self, class_names: list[str], dim: int = 64) -> None:
        super().__init__()
        words = {"<unk>"}
        for label in range(len(class_names)):
            for t in range(len(PHRASE_TEMPLATES)):
                words.update(tokenize(label_phrase(label, class_names, t)))
        self.vocab = ["<unk>"] + sorted(words - {"<unk>"})
        self._index = {w: i for i, w in enumerate(self.vocab)}
        self.embedding = nn.EmbeddingBag(len(self.vocab), dim, mode="mean")
        self.out_dim = dim

    def forward(self, phrases: list[str]) -> Tensor:
        """``phrases`` (P strings) -> ``[P, dim]``. An empty phrase is an error, not a zero vector."""
        ids: list[int] = []
        offsets: list[int] = []
        for p in phrases:
            tokens = tokenize(p)
            if not tokens:
                raise InputError(f"empty phrase {p!r}: a query needs at least one word")
            offsets.append(len(ids))
            ids.extend(self._index.get(t, 0) for t in tokens)
        device = self.embedding.weight.device
        return self.embedding(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))
