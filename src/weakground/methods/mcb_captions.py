"""Fang et al.'s MCB attention trained from captions (``mcb_attention`` with ``query: caption``).

    caption --MiniLM (frozen) sentence embedding--> e [384] --dense 128, ReLU--> q
    image --EfficientNet-Lite0 level (frozen) | ResNet--> f [C, h, w]
    MCB(f(x, y), q) --1x1 conv, ReLU, 1x1 conv, sigmoid--> r(x, y)        the same attention as the label mode
    f' = pool_{x,y} r(x, y) f(x, y) --linear--> u [D]      e --linear--> v [D]      S(image, caption) = <u, v>/|u||v|

Fang et al. supervise f' with the queried class; with captions there is no class to name, so f' is asked to
*match its caption* instead: a bidirectional hinge ranking loss over the batch (each image attended with every
caption of the batch; the other captions and images are the negatives) plus the paper's beta * mean(r^2). The
attended feature can only match the caption if the attention sits on what the caption describes. A phrase's
heatmap is its attention map r.

``caption_queries: words`` brings the queries back to the paper's size: there one query names one thing (a class
label), while a whole caption names several, so its one map has no reason to prefer the phrase asked about at
test time over the caption's other objects. Here each word of the caption is a query of its own (its contextual
MiniLM state, so "circle" in "a red circle left of a square" knows it is red):

    word w --dense 128, ReLU--> q_w --MCB attention--> r_w --pool, linear--> u_w      s_w = cos(u_w, W_t e_w + b_t)
    S(image, caption) = 1/gamma log sum_w exp(gamma s_w)                      Akbari et al.'s soft maximum over words

and a phrase's heatmap is its words' maps weighted by softmax_w(gamma s_w), the share each word has in that soft
maximum (its gradient), so the words that match the image draw the map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import weakground.text  # noqa: F401  (registers the text encoders in TEXT_ENCODERS)
from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.losses import RANKING_NEGATIVES, attention_sparsity, log_sum_exp_pool, triplet_ranking_loss
from weakground.methods.base import InferenceSettings, JointSpaceGrounder, check_choice
from weakground.methods.caption_parts import FrozenEvalMixin, ImageRegions, frozen_attributes, trainable_groups
from weakground.methods.mcb_attention import CLASSIFIER_TERMS, MCBAttention, MCBAttentionConfig
from weakground.registry import TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions


class MCBCaptionAttention(FrozenEvalMixin, MCBAttention, JointSpaceGrounder):
    """Caption mode of :class:`MCBAttention`: what ``create_method("mcb_attention", ...)`` builds when
    ``config.query`` is ``"caption"`` (this module lists it in ``MCBAttention.variants``). It inherits the
    attention (``attend``, ``pooled``, ``heatmaps``) and replaces the label encoder, the classifier and the
    losses.

    Attributes:
        backbone: the image encoder (:class:`ImageRegions`; frozen EfficientNet-Lite0 level by default).
        text_encoder: the frozen MiniLM.
    """

    min_image_side = 32  # EfficientNet-Lite's deeper levels need at least a 32-pixel side

    def __init__(self, config: MCBAttentionConfig, backbone_config: BackboneConfig, class_names: list[str],
                 inference: InferenceSettings | None = None) -> None:
        # MCBAttention.__init__ builds the label mode's ResNet, label encoder and classifier: skip to the base.
        super(MCBAttention, self).__init__(config, backbone_config, class_names, inference)
        self._check_settings()
        self.backbone = ImageRegions(config.image_encoder, config.level, config.finetune_image_encoder,
                                     backbone_config)
        self.text_encoder = TEXT_ENCODERS.get("minilm")(TextEncoderOptions())  # the frozen MiniLM, shared
        self.frozen_modules = frozen_attributes(self, ("text_encoder", "backbone"))
        channels, text_dim = self.backbone.out_channels, self.text_encoder.out_dim
        self._build_attention(channels, text_dim)
        self.image_proj = nn.Linear(channels, config.joint_dim)
        self.text_proj = nn.Linear(text_dim, config.joint_dim)

    def _check_settings(self) -> None:
        """One-line errors for the caption mode's settings, and for the label mode's that do not apply."""
        config = self.config
        self._check_pooling()
        check_choice(config, "negatives", RANKING_NEGATIVES)
        check_choice(config, "caption_queries", ("sentence", "words"))
        if not config.gamma_words > 0:
            raise ConfigError(f"method.params.gamma_words must be > 0, got {config.gamma_words}")
        for key in CLASSIFIER_TERMS:
            if getattr(config, key):
                raise ConfigError(f"method.params.{key} needs a classifier to name the queried label: it applies to "
                                  "query 'onehot' or 'phrase', not 'caption'")
        if config.classifier_bias != "all":
            raise ConfigError("method.params.classifier_bias applies to the label classifier (query 'onehot' or "
                              "'phrase'); the caption mode has none")

    # -- text ----------------------------------------------------------------------------------------------------
    def _sentences(self, texts: list[str]) -> Tensor:
        """``[T, 384]`` frozen MiniLM sentence embeddings (an empty text embeds as ``[CLS] [SEP]``; a text
        beyond 128 word pieces is truncated)."""
        return self.text_encoder.embed(list(texts)).to(self.query_dense.weight.device)

    def _query_vectors(self, phrases: list[str]) -> Tensor:
        return F.relu(self.query_dense(self._sentences(phrases)))

    def _text_units(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """The texts' queries: ``units [N, 384]`` and ``mask [T, W]`` (bool), units in row-major order of the mask.

        ``caption_queries: sentence``: one unit per text, its sentence embedding (``W = 1``). ``words``: every word
        of every text (:meth:`weakground.text.minilm.MiniLM.words`).
        """
        device = self.query_dense.weight.device
        if self.config.caption_queries == "sentence":
            return self._sentences(texts), torch.ones(len(texts), 1, dtype=torch.bool, device=device)
        words, mask = self.text_encoder.words(list(texts))
        mask = mask.to(device)
        return words.to(device)[mask], mask

    # -- scores ----------------------------------------------------------------------------------------------------
    def _pair_scores(self, features: Tensor, attention: Tensor, units: Tensor) -> Tensor:
        """Cosine in the joint space of each image attended with each query and that query's text.

        Args:
            features: ``[B, C, h, w]``.
            attention: ``[B, N, h, w]``, image b attended with query n.
            units: ``[N, 384]`` the queries' text embeddings (sentences or words, see :meth:`_text_units`).

        Returns:
            ``[B, N]``: ``S[b, n] = cos(W_i f'_{bn} + b_i, W_t e_n + b_t)``.
        """
        image = F.normalize(self.image_proj(self.pooled(features, attention)), dim=-1)  # [B, N, D]
        text = F.normalize(self.text_proj(units), dim=-1)  # [N, D]
        return torch.einsum("bnd,nd->bn", image, text)

    def _unit_scores(self, features: Tensor, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Every image attended with every query of ``texts``: scores ``[B, N]``, attention ``[B, N, h, w]`` and
        the texts' unit ``mask [T, W]``."""
        units, mask = self._text_units(texts)
        attention = self.attend(features, F.relu(self.query_dense(units)))
        return self._pair_scores(features, attention, units), attention, mask

    @staticmethod
    def _by_text(unit_values: Tensor, mask: Tensor, fill: float) -> Tensor:
        """``[B, N, ...]`` per-unit values -> ``[B, T, W, ...]``, ``fill`` where the mask is False."""
        grid = unit_values.new_full((unit_values.shape[0],) + tuple(mask.shape) + tuple(unit_values.shape[2:]), fill)
        grid[:, mask] = unit_values
        return grid

    def _text_scores(self, unit_scores: Tensor, mask: Tensor) -> Tensor:
        """``[B, N]`` -> ``[B, T]``: a text's score is its one unit's, or the soft maximum over its words."""
        if mask.shape[1] == 1:
            return unit_scores
        return log_sum_exp_pool(self._by_text(unit_scores, mask, 0.0), mask, self.config.gamma_words)

    def _scores_and_attention(self, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor]:
        unit_scores, attention, mask = self._unit_scores(self.backbone(images), texts)
        return self._text_scores(unit_scores, mask), attention

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        """The exact score ``[B, T]``: every image attended with every text (f' depends on the query), so the cost
        grows with B x T; the MCB fusion is chunked inside :meth:`attend`."""
        images = self.prepare_images(images)
        if not texts:
            return images.new_zeros(images.shape[0], 0)
        return self._scores_and_attention(images, texts)[0]

    # -- the exact score in parts: retrieval encodes each image and each caption once (engine/retrieval.py) -------
    def score_image_features(self, images: Tensor) -> Tensor:
        """What :meth:`scores` reads of the images: the encoder's features ``[B, C, h, w]``."""
        return self.backbone(self.prepare_images(images))

    def score_text_features(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """What :meth:`scores` reads of the texts: their query units and mask (:meth:`_text_units`)."""
        return self._text_units(list(texts))

    def score_features(self, features: Tensor, text: tuple[Tensor, Tensor]) -> Tensor:
        """``[B, T]`` scores from :meth:`score_image_features` and :meth:`score_text_features` (the same
        attention, pairing and pooling as :meth:`scores`)."""
        units, mask = text
        attention = self.attend(features, F.relu(self.query_dense(units)))
        return self._text_scores(self._pair_scores(features, attention, units), mask)

    def encode_image(self, images: Tensor) -> Tensor:
        """``[B, D]`` attention-free embedding: the projected mean feature (``f'`` with ``r = 1`` everywhere).

        A first-stage approximation for indexing: the exact score attends with each text (:meth:`scores`). With
        ``pooling: normalized`` f' is a weighted average of the same features, so the two agree up to where the
        attention looks; with ``pooling: mean`` f' is also scaled by the attention mass.
        """
        images = self.prepare_images(images)
        return F.normalize(self.image_proj(self.backbone(images).mean(dim=(2, 3))), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """``[T, D]``: the projected caption embedding (exactly the text side of :meth:`scores`); with
        ``caption_queries: words`` the unit mean of the projected words (the text side of each word's score)."""
        if self.config.caption_queries == "sentence":
            return F.normalize(self.text_proj(self._sentences(texts)), dim=-1)
        units, mask = self._text_units(texts)
        words = self._by_text(F.normalize(self.text_proj(units), dim=-1)[None], mask, 0.0)[0]  # [T, W, D]
        return F.normalize(words.sum(1), dim=-1)

    # -- grounding -------------------------------------------------------------------------------------------------
    def _phrase_maps(self, features: Tensor, phrases: list[str]) -> Tensor:
        """``[B, P, h, w]`` in (0, 1): the phrase's attention map, or (``caption_queries: words``) its words' maps
        weighted by ``softmax_w(gamma s_w)``."""
        if self.config.caption_queries == "sentence":
            return super()._phrase_maps(features, phrases)
        unit_scores, attention, mask = self._unit_scores(features, phrases)
        logits = self._by_text(self.config.gamma_words * unit_scores, mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # [B, P, W], sums to 1 over each phrase's words (0 on padding)
        return (weights[..., None, None] * self._by_text(attention, mask, 0.0)).sum(2)

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Batch ``{"images": [B, 3, S, S], "captions": B strings}``, caption i describing image i.

        ``L = L_rank(S) + beta * mean(r^2)`` with ``S`` the ``[B, B]`` scores of every image attended with every
        caption, ``L_rank`` :func:`weakground.losses.triplet_ranking_loss` and ``r`` all B x B attention maps
        (B x words with ``caption_queries: words``).
        """
        images, captions = batch["images"], batch["captions"]
        if len(captions) != images.shape[0]:
            raise ValueError(f"a batch needs one caption per image, got {len(captions)} for {images.shape[0]}")
        scores, attention = self._scores_and_attention(images, captions)
        ranking = triplet_ranking_loss(scores, self.config.ranking_margin, self.config.negatives)
        sparsity = attention_sparsity(attention)
        total = ranking + self.config.beta * sparsity
        target = torch.arange(len(captions), device=scores.device)
        accuracy = (scores.argmax(1) == target).float().mean()
        return {"total": total, "ranking": ranking.detach(), "sparsity": sparsity.detach(),
                "accuracy": accuracy.detach()}

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """The attention and projections at ``lr``; a trainable image encoder at ``lr * backbone_lr_mult``; the
        frozen encoders get no group."""
        return trainable_groups(self, self.backbone, lr, backbone_lr_mult)


MCBAttention.variants["caption"] = MCBCaptionAttention
