"""The settings a text-encoder factory of :data:`weakground.registry.TEXT_ENCODERS` takes, and what every text
encoder offers.

A registered factory is ``factory(options: TextEncoderOptions) -> module``; importing :mod:`weakground.text`
registers them all: ``"minilm"`` (the frozen, shared all-MiniLM-L6-v2, which reads none of the options) and
``"sru"``, ``"gru"``, ``"bilstm"`` (:class:`weakground.text.recurrent.RecurrentTextEncoder` over GloVe, trained).
Every module it returns offers

* ``out_dim``: D, the width of its token and sentence vectors;
* ``sentences(texts) -> [T, D]``: one vector per text;
* ``states(texts, units="words") -> (states [T, W, D], mask [T, W] bool, sentence [T, D])``: per-word (or, for a
  sub-word encoder, per-piece with ``units="pieces"``) states and the sentence vector, from one pass;
* ``pretrained_parameters()``: the pretrained weights that train here (fine-tuned at ``lr * backbone_lr_mult``).

Whether an encoder is frozen is read off its parameters (none with ``requires_grad``), not off its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from weakground.text.glove import MAX_TOKENS


@dataclass(frozen=True)
class TextEncoderOptions:
    """Settings of a trained (recurrent) text encoder; a frozen pretrained encoder reads none of them.

    Attributes:
        hidden: units per direction.
        layers: stacked recurrent layers.
        bidirectional: add a backward direction; None: the kind's own default (bilstm is, sru/gru are not).
        dropout: between stacked layers.
        freeze_glove: keep the GloVe table fixed (out of checkpoints).
        max_tokens: texts are truncated to this many tokens.
    """

    hidden: int = 256
    layers: int = 1
    bidirectional: bool | None = None
    dropout: float = 0.0
    freeze_glove: bool = True
    max_tokens: int = MAX_TOKENS
