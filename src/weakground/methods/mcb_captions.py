"""Seed 000's MCB attention trained from captions (``mcb_attention`` with ``query: caption``).

    caption --MiniLM (frozen) sentence embedding--> e [384] --dense 128, ReLU--> q
    image --EfficientNet-Lite0 level (frozen) | ResNet--> f [C, h, w]
    MCB(f(x, y), q) --1x1 conv, ReLU, 1x1 conv, sigmoid--> r(x, y)        the same attention as the label mode
    f' = pool_{x,y} r(x, y) f(x, y) --linear--> u [D]      e --linear--> v [D]      S(image, caption) = <u, v>/|u||v|

Fang et al. supervise f' with the queried class; with captions there is no class to name, so f' is asked to
*match its caption* instead: a bidirectional hinge ranking loss over the batch (each image attended with every
caption of the batch; the other captions and images are the negatives) plus the paper's beta * mean(r^2). The
attended feature can only match the caption if the attention sits on what the caption describes. A phrase's
heatmap is its attention map r.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.losses import RANKING_NEGATIVES, attention_sparsity, triplet_ranking_loss
from weakground.methods.caption_parts import FrozenEvalMixin, ImageRegions, trainable_groups
from weakground.methods.base import check_choice
from weakground.methods.mcb_attention import MCBAttention, MCBAttentionConfig


class MCBCaptionAttention(FrozenEvalMixin, MCBAttention):
    """Caption mode of :class:`MCBAttention`; built by ``MCBAttention(config, ...)`` when ``config.query`` is
    ``"caption"``. It inherits the attention (``attend``, ``pooled``, ``heatmaps``) and replaces the label
    encoder, the classifier and the losses.

    Attributes:
        backbone: the image encoder (:class:`ImageRegions`; frozen EfficientNet-Lite0 level by default).
        text_encoder: the frozen MiniLM.
    """

    has_joint_space = True
    min_image_side = 32  # EfficientNet-Lite's deeper levels need at least a 32-pixel side

    def __init__(self, config: MCBAttentionConfig, backbone_config: BackboneConfig, class_names: list[str]) -> None:
        # MCBAttention.__init__ builds the label mode's ResNet, label encoder and classifier: skip to the base.
        super(MCBAttention, self).__init__(config, backbone_config, class_names)
        self._check_pooling()
        check_choice(config, "negatives", RANKING_NEGATIVES)
        if config.mining:
            raise ConfigError("method.params.mining needs a classifier to mine against: it applies to query 'onehot' "
                              "or 'phrase', not 'caption'")
        from weakground.text.minilm import shared_minilm

        self.backbone = ImageRegions(config.image_encoder, config.level, config.finetune_image_encoder,
                                     backbone_config)
        self.text_encoder = shared_minilm()
        self.frozen_modules = ("text_encoder",) + (("backbone",) if self.backbone.frozen else ())
        channels, text_dim = self.backbone.out_channels, self.text_encoder.model.config.hidden_size
        self._build_attention(channels, text_dim)
        self.image_proj = nn.Linear(channels, config.joint_dim)
        self.text_proj = nn.Linear(text_dim, config.joint_dim)

    # -- text ----------------------------------------------------------------------------------------------------
    def _sentences(self, texts: list[str]) -> Tensor:
        """``[T, 384]`` frozen MiniLM sentence embeddings (an empty text embeds as ``[CLS] [SEP]``; a text
        beyond 128 word pieces is truncated)."""
        return self.text_encoder.embed(list(texts)).to(self.query_dense.weight.device)

    def _query_vectors(self, phrases: list[str]) -> Tensor:
        return F.relu(self.query_dense(self._sentences(phrases)))

    # -- scores ----------------------------------------------------------------------------------------------------
    def _pair_scores(self, features: Tensor, attention: Tensor, sentences: Tensor) -> Tensor:
        """Cosine in the joint space of each image attended with each text and that text.

        Args:
            features: ``[B, C, h, w]``.
            attention: ``[B, T, h, w]``, image b attended with text t.
            sentences: ``[T, 384]``.

        Returns:
            ``[B, T]``: ``S[b, t] = cos(W_i f'_{bt} + b_i, W_t e_t + b_t)``.
        """
        image = F.normalize(self.image_proj(self.pooled(features, attention)), dim=-1)  # [B, T, D]
        text = F.normalize(self.text_proj(sentences), dim=-1)  # [T, D]
        return torch.einsum("btd,td->bt", image, text)

    def _scores_and_attention(self, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor]:
        features = self.backbone(images)
        sentences = self._sentences(texts)
        attention = self.attend(features, F.relu(self.query_dense(sentences)))  # every image x every text
        return self._pair_scores(features, attention, sentences), attention

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        """The exact score ``[B, T]``: every image attended with every text (f' depends on the query), so the cost
        grows with B x T; the MCB fusion is chunked inside :meth:`attend`."""
        images = self.prepare_images(images)
        if not texts:
            return images.new_zeros(images.shape[0], 0)
        return self._scores_and_attention(images, texts)[0]

    def encode_image(self, images: Tensor) -> Tensor:
        """``[B, D]`` attention-free embedding: the projected mean feature (``f'`` with ``r = 1`` everywhere).

        A first-stage approximation for indexing: the exact score attends with each text (:meth:`scores`). With
        ``pooling: normalized`` f' is a weighted average of the same features, so the two agree up to where the
        attention looks; with ``pooling: mean`` f' is also scaled by the attention mass.
        """
        images = self.prepare_images(images)
        return F.normalize(self.image_proj(self.backbone(images).mean(dim=(2, 3))), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """``[T, D]``: the projected caption embedding (exactly the text side of :meth:`scores`)."""
        return F.normalize(self.text_proj(self._sentences(texts)), dim=-1)

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Batch ``{"images": [B, 3, S, S], "captions": B strings}``, caption i describing image i.

        ``L = L_rank(S) + beta * mean(r^2)`` with ``S`` the ``[B, B]`` scores of every image attended with every
        caption, ``L_rank`` :func:`weakground.losses.triplet_ranking_loss` and ``r`` all B x B attention maps.
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
