"""Phrases read inside their caption: Akbari et al.'s Flickr30K protocol (Sec. 4.3: "we feed a complete sentence
to the model and take weighted average of attention heatmaps of words for each query").

A phrase is given as a span of its caption, ``(caption index, first word, one past the last word)`` in the words of
``caption.split()`` (the convention of :attr:`weakground.data.types.Phrase.first_word_index`). The caption is
encoded whole by the method's contextual text encoder, and the phrase's words are the encoder's word units that
fall inside the span: "red" in "a red circle left of a blue square" is read with the rest of the caption, not
alone. A method that can do this mixes in :class:`InContextMixin` and implements ``heatmaps_in_context``.

MiniLM's word units (:func:`weakground.text.words.piece_groups`) are not ``split()``'s words: punctuation pieces
belong to no unit and ``"t-shirt"`` is two units. BERT's pre-tokenizer never joins pieces across whitespace, so a
caption's units are the concatenation of its whitespace words' units, and counting each word's units (one tokenizer
call, no model) maps a span of words to a span of units.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from weakground.text.words import piece_groups

__all__ = ["Span", "unit_spans", "words_in_context", "InContextMixin"]

Span = tuple[int, int, int]  # (caption index, first word, one past the last word), words of caption.split()


def unit_spans(tokenizer: Callable[[list[str]], tuple[Any, Any, list[list[str]]]], sentences: Sequence[str],
               spans: Sequence[Span], n_units: Sequence[int]) -> list[Span]:
    """Word spans -> spans of the encoder's word units, cut to the ``n_units`` each sentence was encoded with
    (MiniLM truncates at 128 pieces; a span past the cut comes back empty).

    Args:
        tokenizer: MiniLM's piece tokenizer (``texts -> (ids, mask, pieces)``).
        sentences: the captions, as encoded.
        spans: one per phrase, see :data:`Span`.
        n_units: the number of word units the encoder gave each sentence.

    Raises:
        RuntimeError: a sentence's words give fewer units than its encoding has (the mapping would be wrong).
    """
    words = [s.split() for s in sentences]
    flat = [w for ws in words for w in ws]
    counts = [len(piece_groups(p)) for p in tokenizer(flat)[2]] if flat else []
    starts: list[list[int]] = []  # per sentence, the unit offset of each word (and one past the last)
    k = 0
    for i, ws in enumerate(words):
        offsets = [0]
        for c in counts[k:k + len(ws)]:
            offsets.append(offsets[-1] + c)
        k += len(ws)
        if offsets[-1] < n_units[i]:
            raise RuntimeError(f"caption {sentences[i]!r}: its words give {offsets[-1]} word units, its encoding "
                               f"{n_units[i]}")
        starts.append(offsets)
    out = []
    for s, first, stop in spans:
        offsets = starts[s]
        if not 0 <= first <= stop <= len(offsets) - 1:
            raise ValueError(f"span {(s, first, stop)} does not lie in caption {sentences[s]!r}")
        out.append((s, min(offsets[first], n_units[s]), min(offsets[stop], n_units[s])))
    return out


def words_in_context(encode: Callable[[list[str]], tuple[Tensor, Tensor]], tokenizer: Any, sentences: Sequence[str],
                     spans: Sequence[Span]) -> tuple[Tensor, Tensor]:
    """Each phrase's word vectors as read inside its sentence: ``([P, W, D], mask [P, W])``, padded.

    ``encode(texts) -> (words [N, W, D], mask [N, W])`` is the method's own word encoder (mapped or not: the
    mappings act on each word alone, so gathering commutes with them). A phrase with no unit inside the encoded
    sentence (punctuation only, or past MiniLM's truncation) is encoded alone instead, so every phrase has a word
    exactly when it would have one alone.
    """
    words, mask = encode(list(sentences))
    units = unit_spans(tokenizer, sentences, spans, mask.sum(1).tolist())
    alone = [p for p, (_, a, b) in enumerate(units) if b <= a]
    rows: list[Tensor] = [words[s, a:b] for s, a, b in units]
    if alone:
        texts = [" ".join(sentences[spans[p][0]].split()[spans[p][1]:spans[p][2]]) for p in alone]
        alone_words, alone_mask = encode(texts)
        for j, p in enumerate(alone):
            rows[p] = alone_words[j, alone_mask[j]]
    width = max([r.shape[0] for r in rows] + [1])
    out = words.new_zeros(len(rows), width, words.shape[-1])
    out_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=words.device)
    for p, r in enumerate(rows):
        out[p, :r.shape[0]] = r
        out_mask[p, :r.shape[0]] = True
    return out, out_mask


class InContextMixin:
    """For a :class:`~weakground.methods.Grounder` whose text encoder reads whole captions: phrase maps of phrases
    read inside their caption, through the same shifted-copy averaging as :meth:`Grounder.grounding_maps`."""

    reads_phrases_in_context = True

    def heatmaps_in_context(self, images: Tensor, sentences: list[str], spans: list[Span],
                            inference: Any = None) -> Tensor:
        """``[B, P, h, w]``: one map per span, as :meth:`Grounder.heatmaps` gives one per phrase."""
        raise NotImplementedError

    def grounding_maps_in_context(self, images: Tensor, sentences: list[str], spans: list[Span],
                                  inference: Any = None) -> Tensor:
        """:meth:`heatmaps_in_context`, averaged over shifted copies as the model's (or ``inference``'s)
        ``shift_average`` says; the same resolution rules as :meth:`Grounder.grounding_maps`."""
        from weakground.methods.base import Grounder

        settings = self.inference if inference is None else inference
        if settings.shift_average <= 1 or not spans:
            return self.heatmaps_in_context(images, sentences, spans, inference=settings)
        images = self.prepare_images(images, settings)  # once, as grounding_maps does

        def heatmaps(shifted: Tensor, _phrases: list[Span], inference: Any) -> Tensor:
            return self.heatmaps_in_context(shifted, sentences, spans, inference=inference)

        # Grounder._shift_averaged only calls self.heatmaps: handing it this view reuses its exact shifts and
        # read-back instead of a second copy of them (tests/test_phrase_context.py checks it against grounding_maps).
        return Grounder._shift_averaged(SimpleNamespace(heatmaps=heatmaps), images, list(spans), settings)
