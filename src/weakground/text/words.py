"""Word-level contextual embeddings from MiniLM's word pieces.

MiniLM (a BERT) reads word pieces: ``"xylophonist"`` becomes ``x ##yl ##op ##hon ##ist``. Methods that pool over
the *words* of a caption (the matchmap paper averages over the caption's frames) would give such a word five votes and
``"red"`` one, so the pieces of a word are averaged into one vector. ``[CLS]``/``[SEP]`` are dropped (they summarise
the sentence rather than naming anything in the image), and so are pure punctuation tokens (``.``, ``,``, ``'``),
which name nothing either. Every other word is kept, stop words included, as the paper averages over every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from weakground.text.minilm import MiniLM, TokenEmbeddings

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]")


@dataclass
class WordEmbeddings:
    """Contextual word vectors of a batch of texts.

    Attributes:
        hidden: ``[N, W, 384]`` word vectors (mean of each word's pieces), zero where masked.
        mask: ``[N, W]`` bool, True for real words; a text with no word (empty, or punctuation only) has an
            all-False row.
        words: per text, its words as strings (pieces rejoined), in order.
    """

    hidden: Tensor
    mask: Tensor
    words: list[list[str]]


def piece_groups(pieces: list[str]) -> list[tuple[str, list[int]]]:
    """Group one text's word pieces into words: ``[(word, [piece positions])]``.

    A piece starting with ``##`` continues the previous word; special tokens and pure punctuation are skipped.
    Positions index the tokenizer's sequence (``[CLS]`` is position 0).
    """
    groups: list[tuple[str, list[int]]] = []
    for pos, piece in enumerate(pieces):
        if piece in SPECIAL_TOKENS:
            continue
        if piece.startswith("##") and groups and groups[-1][1][-1] == pos - 1:
            word, positions = groups[-1]
            groups[-1] = (word + piece[2:], positions + [pos])
        elif any(ch.isalnum() for ch in piece):
            groups.append((piece, [pos]))
    return groups


def words_from_tokens(tokens: TokenEmbeddings) -> WordEmbeddings:
    """Average each word's piece vectors: ``word_k = mean_{t in pieces(k)} hidden[t]``.

    Done as one batched product with an averaging matrix ``A[N, W, T]`` (``1/|pieces(k)|`` at the word's
    pieces), so gradients and devices follow ``tokens.hidden``.
    """
    groups = [piece_groups(p) for p in tokens.tokens]
    n, t, _ = tokens.hidden.shape
    w = max([len(g) for g in groups] + [1])
    average = torch.zeros(n, w, t, dtype=tokens.hidden.dtype, device=tokens.hidden.device)
    mask = torch.zeros(n, w, dtype=torch.bool, device=tokens.hidden.device)
    for i, text_groups in enumerate(groups):
        for k, (_, positions) in enumerate(text_groups):
            average[i, k, positions] = 1.0 / len(positions)
            mask[i, k] = True
    return WordEmbeddings(average @ tokens.hidden, mask, [[word for word, _ in g] for g in groups])


def encode_words(encoder: MiniLM, texts: list[str], batch_size: int = 256) -> WordEmbeddings:
    """Word embeddings of ``texts`` (see :func:`words_from_tokens`), encoded ``batch_size`` texts at a time and
    padded to the longest word count. An empty list gives ``[0, 1, 384]``."""
    chunks = [words_from_tokens(encoder.tokens(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
    if not chunks:
        dim = encoder.model.config.hidden_size
        return WordEmbeddings(torch.zeros(0, 1, dim, device=encoder.device),
                              torch.zeros(0, 1, dtype=torch.bool, device=encoder.device), [])
    w = max(c.hidden.shape[1] for c in chunks)
    hidden = torch.cat([torch.nn.functional.pad(c.hidden, (0, 0, 0, w - c.hidden.shape[1])) for c in chunks])
    mask = torch.cat([torch.nn.functional.pad(c.mask, (0, w - c.mask.shape[1])) for c in chunks])
    return WordEmbeddings(hidden, mask, [words for c in chunks for words in c.words])
