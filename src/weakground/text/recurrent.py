"""Recurrent text encoders over GloVe word vectors: SRU (Engilberge et al.), GRU and BiLSTM.

    texts --tokenize--> ids [B, T] --GloVe (+ learned UNK vector)--> [B, T, 50] --RNN--> tokens [B, T, D]
                                                                                   \\--> sentence [B, D]

The SRU is written out here rather than taken from the ``sru`` package: that package JIT-compiles CUDA kernels
when imported (it needs ``ninja`` and ``CUDA_HOME``) and on a CPU only runs an unoptimised fallback that warns on
every training step. The recurrence below is the paper's, vectorised over the batch and both directions' matrix
products hoisted out of the time loop, which is what makes SRU cheap (Lei et al., "Simple Recurrent Units for
Highly Parallelizable Recurrence", EMNLP 2018, Sec. 2):

    f_t = sigmoid(W_f x_t + v_f * c_{t-1} + b_f)          forget gate
    r_t = sigmoid(W_r x_t + v_r * c_{t-1} + b_r)          reset (highway) gate
    c_t = f_t * c_{t-1} + (1 - f_t) * (W x_t)             internal state
    h_t = r_t * c_t + (1 - r_t) * (P x_t)                 output; P = identity when dims agree, else a learned
                                                          projection (the paper's highway connection)

GRU and BiLSTM use ``torch.nn.GRU``/``LSTM`` on packed sequences.

Padding never changes a result: SRU holds its state through padded steps (so the backward direction starts at
each text's own last token), and packing does the same for GRU/LSTM; padded token outputs are zero. An empty
text is read as one UNK token (see :meth:`weakground.text.glove.GloveVocab.encode`), an all-OOV text as a
sequence of UNK tokens, and texts longer than ``max_tokens`` tokens are truncated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from weakground.errors import ConfigError
from weakground.registry import TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions
from weakground.text.glove import MAX_TOKENS, UNK_ID, EncodedTexts, shared_glove

KINDS = ("sru", "gru", "bilstm")
SENTENCE_POOLINGS = ("last", "mean", "max")


def sru_recurrence(u: Tensor, skip: Tensor, v: Tensor, b: Tensor, mask: Tensor, reverse: bool = False) -> Tensor:
    """One direction of the SRU time loop (see the module docstring for the formulas).

    Args:
        u: ``[B, T, 3, H]`` the hoisted products ``W x_t``, ``W_f x_t``, ``W_r x_t``.
        skip: ``[B, T, H]`` the highway input ``P x_t``.
        v: ``[2, H]`` the peephole weights ``v_f``, ``v_r``.
        b: ``[2, H]`` the biases ``b_f``, ``b_r``.
        mask: ``[B, T]`` bool, True at real tokens. At a padded step the state is carried unchanged and the
            output is zero, so padding anywhere (the backward direction meets it first) changes nothing.
        reverse: run from ``t = T - 1`` down to 0 (the backward direction).

    Returns:
        ``[B, T, H]`` outputs ``h_t`` (zero at padded steps).
    """
    batch, steps, _, hidden = u.shape
    c = u.new_zeros(batch, hidden)
    outputs: list[Tensor] = [u.new_zeros(0)] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        f = torch.sigmoid(u[:, t, 1] + v[0] * c + b[0])
        r = torch.sigmoid(u[:, t, 2] + v[1] * c + b[1])
        c_new = f * c + (1 - f) * u[:, t, 0]
        h = r * c_new + (1 - r) * skip[:, t]
        keep = mask[:, t, None]
        c = torch.where(keep, c_new, c)
        outputs[t] = h * keep
    return torch.stack(outputs, dim=1)


class SRULayer(nn.Module):
    """One SRU layer, optionally bidirectional: ``[B, T, I] -> [B, T, directions * H]``."""

    def __init__(self, input_size: int, hidden: int, bidirectional: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.directions = 2 if bidirectional else 1
        # All of W, W_f, W_r (and P when dims differ) for every direction in one matrix product over all steps.
        self.project_skip = input_size != hidden
        per_direction = (4 if self.project_skip else 3) * hidden
        self.weight = nn.Linear(input_size, self.directions * per_direction, bias=False)
        self.v = nn.Parameter(torch.empty(self.directions, 2, hidden))
        self.b = nn.Parameter(torch.zeros(self.directions, 2, hidden))
        nn.init.xavier_uniform_(self.weight.weight)
        nn.init.uniform_(self.v, -1.0 / math.sqrt(hidden), 1.0 / math.sqrt(hidden))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, T, I]``, ``mask [B, T]`` -> ``[B, T, directions * H]`` (forward direction first)."""
        batch, steps, _ = x.shape
        k = 4 if self.project_skip else 3
        products = self.weight(x).view(batch, steps, self.directions, k, self.hidden)
        outputs = []
        for d in range(self.directions):
            skip = products[:, :, d, 3] if self.project_skip else x
            outputs.append(sru_recurrence(products[:, :, d, :3], skip, self.v[d], self.b[d], mask, reverse=d == 1))
        return torch.cat(outputs, dim=-1)


class SRU(nn.Module):
    """Stacked SRU layers with dropout between them: ``[B, T, I] -> [B, T, directions * H]``."""

    def __init__(self, input_size: int, hidden: int, layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        sizes = [input_size] + [directions * hidden] * (layers - 1)
        self.layers = nn.ModuleList(SRULayer(s, hidden, bidirectional) for s in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x = layer(x, mask)
        return x


class RecurrentTextEncoder(nn.Module):
    """Texts -> GloVe vectors -> SRU / GRU / BiLSTM -> token states and a sentence vector.

    Args:
        kind: ``"sru"`` (Engilberge et al.), ``"gru"`` or ``"bilstm"``.
        hidden: hidden units per direction.
        layers: stacked recurrent layers.
        bidirectional: run a backward direction too; default False for ``sru``/``gru``, and ``bilstm`` is
            always bidirectional.
        dropout: between stacked layers.
        freeze_glove: keep the 400k x 50 GloVe table fixed (default, as in the papers). It is then a
            non-persistent buffer, out of checkpoints; unfrozen, it is a parameter and checkpoints grow by 80 MB.
        max_tokens: texts are truncated to this many tokens.
        sentence: the sentence vector: ``"last"`` (the forward direction's state at each text's last token, and
            the backward direction's at its first token; Engilberge et al.'s choice), ``"mean"`` or ``"max"`` over tokens.

    Attributes:
        out_dim: D, ``hidden * directions``.
    """

    def __init__(self, kind: str = "sru", hidden: int = 256, layers: int = 1, bidirectional: bool | None = None,
                 dropout: float = 0.0, freeze_glove: bool = True, max_tokens: int = MAX_TOKENS,
                 sentence: str = "last") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"text encoder kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if sentence not in SENTENCE_POOLINGS:
            raise ConfigError(f"sentence pooling must be one of {', '.join(SENTENCE_POOLINGS)}, got {sentence!r}")
        if kind == "bilstm" and bidirectional is False:
            raise ConfigError("text encoder 'bilstm' is bidirectional by definition")
        if hidden < 1 or layers < 1 or max_tokens < 1:
            raise ConfigError(f"text encoder needs hidden, layers and max_tokens >= 1, got {hidden}, {layers}, "
                              f"{max_tokens}")
        bidirectional = kind == "bilstm" if bidirectional is None else bidirectional
        self.kind, self.sentence, self.max_tokens = kind, sentence, max_tokens
        self.directions = 2 if bidirectional else 1
        self.out_dim = hidden * self.directions
        self.vocab = shared_glove()
        if freeze_glove:
            self.register_buffer("glove", self.vocab.vectors, persistent=False)
        else:
            self.glove = nn.Parameter(self.vocab.vectors.clone())
        # Every OOV word shares this vector (added on the table's zero UNK row); zero at first = "no information".
        self.unk = nn.Parameter(torch.zeros(self.vocab.vectors.shape[1]))
        dim_in = self.vocab.vectors.shape[1]
        self.rnn: nn.Module
        if kind == "sru":
            self.rnn = SRU(dim_in, hidden, layers, bidirectional, dropout)
        else:
            rnn_class = nn.GRU if kind == "gru" else nn.LSTM
            self.rnn = rnn_class(dim_in, hidden, layers, batch_first=True, bidirectional=bidirectional,
                                 dropout=dropout if layers > 1 else 0.0)

    @property
    def device(self) -> torch.device:
        return self.unk.device

    def embed(self, ids: Tensor) -> Tensor:
        """``[B, T]`` ids -> ``[B, T, 50]`` word vectors (GloVe, or the learned UNK vector for OOV ids)."""
        vectors = F.embedding(ids, self.glove)
        return vectors + (ids == UNK_ID)[..., None].to(vectors.dtype) * self.unk

    def encode(self, texts: list[str]) -> EncodedTexts:
        """Token ids of ``texts`` on this encoder's device."""
        encoded = self.vocab.encode(list(texts), self.max_tokens)
        return EncodedTexts(encoded.ids.to(self.device), encoded.mask.to(self.device), encoded.tokens)

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a batch of texts.

        Returns:
            ``tokens [B, T, D]`` (zero at padding), ``mask [B, T]`` bool (True at real tokens, at least one per
            text) and ``sentence [B, D]``; ``T`` is the longest text's token count (at most ``max_tokens``).
        """
        if not texts:
            empty = self.unk.new_zeros(0, 1, self.out_dim)
            return empty, torch.zeros(0, 1, dtype=torch.bool, device=self.device), empty[:, 0]
        encoded = self.encode(texts)
        return self.forward_ids(encoded.ids, encoded.mask)

    def forward_ids(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` on ids already encoded (``[B, T]`` each, every row with at least one real token)."""
        x = self.embed(ids)
        lengths = mask.sum(1)
        if self.kind == "sru":
            tokens = self.rnn(x, mask)
            last_state = None
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed)
            tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
            h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
            last_state = torch.cat(list(h_n[-self.directions:]), dim=-1)  # the top layer's directions
        return tokens, mask, self._sentence(tokens, mask, lengths, last_state)

    # -- the text-encoder interface (weakground.text.encoders) ------------------------------------------------
    def sentences(self, texts: list[str]) -> Tensor:
        """``[T, D]`` sentence vectors (those of :meth:`forward`)."""
        return self(list(texts))[2]

    def states(self, texts: list[str], units: str = "words") -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`: tokens are whole words here, so ``units`` is not read."""
        return self(list(texts))

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The GloVe table when it is fine-tuned (``freeze_glove=False``); else none."""
        return [self.glove] if isinstance(self.glove, nn.Parameter) else []

    def _sentence(self, tokens: Tensor, mask: Tensor, lengths: Tensor, last_state: Tensor | None) -> Tensor:
        if self.sentence == "mean":
            return tokens.sum(1) / lengths[:, None].to(tokens.dtype)
        if self.sentence == "max":
            return tokens.masked_fill(~mask[..., None], float("-inf")).amax(1)
        if last_state is not None:
            return last_state
        hidden = self.out_dim // self.directions
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        forward = tokens[rows, lengths - 1, :hidden]  # forward direction: after reading the whole text
        if self.directions == 1:
            return forward
        return torch.cat([forward, tokens[:, 0, hidden:]], dim=-1)  # backward direction: after reading it all


def _register(kind: str) -> None:
    @TEXT_ENCODERS.register(kind)
    def build(options: TextEncoderOptions) -> RecurrentTextEncoder:
        o = options
        return RecurrentTextEncoder(kind, o.hidden, o.layers, o.bidirectional, o.dropout,
                                    freeze_glove=o.freeze_glove, max_tokens=o.max_tokens)

    build.__doc__ = f"The text encoder ``{kind}``: :class:`RecurrentTextEncoder` over GloVe, trained."


for _kind in KINDS:
    _register(_kind)
