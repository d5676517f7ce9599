"""The matchmap paper: associative localization with matchmaps (Ghouse, Verma & Das; after Harwath et al., ECCV 2018).

    image --EfficientNet-Lite0 level (frozen)--> [C, h, w] --1x1 conv (or MLP)--> regions   r_n in R^D
    caption --MiniLM (frozen), word pieces averaged into words--> [L, 384] --linear--> words  w_l in R^D
    matchmap M[n, l] = <r_n, w_l>                                (the "3rd order tensor": h x w x L per pair)
    S(image, caption) = 1/L sum_l max_n M[n, l]                  (Section 2: each word meets its best patch)

Training sees images and their captions only: a triplet ranking loss (margin, in-batch negatives) asks that an
image and its own caption score above mismatched pairs, and since a word can only raise the score through the
region it matches best, each word's similarity map learns where that word is. A phrase's heatmap is the ReLU of
its words' similarity maps, averaged over the words.

The pooling of a matchmap into a score is a setting (:data:`SCORE_POOLINGS`, Harwath et al.'s MISA/SIMA/SISA and
the max over both); the pure functions :func:`matchmap` and :func:`matchmap_score` hold the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import weakground.text  # noqa: F401  (registers the text encoders in TEXT_ENCODERS)
from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.losses import RANKING_NEGATIVES, triplet_ranking_loss
from weakground.methods.base import InferenceSettings, JointSpaceGrounder, check_choice
from weakground.methods.caption_parts import (FrozenEvalMixin, FrozenFeatureSpec, ImageRegions, batch_image_maps,
                                              batch_text_units, frozen_attributes, frozen_image_identity,
                                              trainable_groups, unit_lengths)
from weakground.methods.phrase_context import InContextMixin, Span, words_in_context
from weakground.registry import METHODS, TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions
from weakground.text.words import WordEmbeddings, encode_words

# name -> Harwath et al.'s name: which of (regions, words) is max-pooled, which averaged.
SCORE_POOLINGS = {
    "max_region_mean_word": "MISA",  # the paper: each word's best region, averaged over words
    "max_word_mean_region": "SIMA",  # each region's best word, averaged over regions
    "mean": "SISA",  # average over regions and words
    "max": "MIMA",  # the single best region-word pair
}
HEATMAP_WORDS = ("mean", "max_weighted")


def matchmap(regions: Tensor, words: Tensor) -> Tensor:
    """Every image's regions against every text's words: ``M[b, t, n, l] = <regions[b, n], words[t, l]>``.

    Args:
        regions: ``[B, N, D]`` region embeddings (N = h*w grid cells).
        words: ``[T, L, D]`` word embeddings (padded; the mask goes to :func:`matchmap_score`).

    Returns:
        ``[B, T, N, L]`` similarities.
    """
    return torch.einsum("bnd,tld->btnl", regions, words)


def matchmap_score(sim: Tensor, word_mask: Tensor, pooling: str = "max_region_mean_word") -> Tensor:
    """Pool matchmaps into image-text scores, over the real words only.

    With ``M = sim[b, t]`` (``N`` regions x the ``L_t`` real words of text t):

    * ``max_region_mean_word`` (MISA, the matchmap paper): ``S = 1/L_t sum_l max_n M[n, l]``
    * ``max_word_mean_region`` (SIMA):          ``S = 1/N sum_n max_l M[n, l]``
    * ``mean`` (SISA):                           ``S = 1/(N L_t) sum_{n,l} M[n, l]``
    * ``max`` (MIMA):                            ``S = max_{n,l} M[n, l]``

    A text with no word (``L_t = 0``) scores 0 against every image.

    Args:
        sim: ``[B, T, N, L]`` from :func:`matchmap`.
        word_mask: ``[T, L]`` bool, True for real words.
        pooling: a key of :data:`SCORE_POOLINGS`.

    Returns:
        ``[B, T]`` scores.
    """
    if pooling not in SCORE_POOLINGS:
        raise ValueError(f"pooling must be one of {tuple(SCORE_POOLINGS)}, got {pooling!r}")
    mask = word_mask[None, :, None, :]  # [1, T, 1, L]
    n_words = word_mask.sum(-1).to(sim.dtype)  # [T]
    has_words = n_words > 0
    neg_inf = torch.finfo(sim.dtype).min
    if pooling == "max_region_mean_word":
        per_word = sim.amax(dim=2) * word_mask[None]  # [B, T, L]
        score = per_word.sum(-1) / n_words.clamp_min(1)
    elif pooling == "max_word_mean_region":
        per_region = sim.masked_fill(~mask, neg_inf).amax(dim=3)  # [B, T, N]
        score = per_region.mean(-1)
    elif pooling == "mean":
        score = (sim * mask).sum(dim=(2, 3)) / (n_words.clamp_min(1) * sim.shape[2])
    else:
        score = sim.masked_fill(~mask, neg_inf).amax(dim=(2, 3))
    return torch.where(has_words[None], score, torch.zeros_like(score))


def phrase_heatmaps(sim: Tensor, word_mask: Tensor, weighting: str = "mean") -> Tensor:
    """Heatmaps from matchmaps: the phrase's words' ReLU similarity maps, combined over its words.

    ``H[b, p, n] = sum_l a_l relu(M[b, p, n, l])`` over the phrase's real words, with ``a_l = 1/L_p`` (``mean``)
    or ``a_l = relu(max_n M[n, l]) / sum_k relu(max_n M[n, k])`` (``max_weighted``: words that match something
    somewhere count more, so "the" or an unknown word adds little). A phrase with no word gets a zero map.

    Args:
        sim: ``[B, P, N, L]``.
        word_mask: ``[P, L]`` bool.
        weighting: ``"mean"`` or ``"max_weighted"``.

    Returns:
        ``[B, P, N]`` non-negative maps.
    """
    positive = F.relu(sim) * word_mask[None, :, None, :]
    if weighting == "mean":
        weights = word_mask.to(sim.dtype)[None].expand(sim.shape[0], -1, -1)
    elif weighting == "max_weighted":
        weights = positive.amax(dim=2)  # [B, P, L]
    else:
        raise ValueError(f"weighting must be one of {HEATMAP_WORDS}, got {weighting!r}")
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("bpnl,bpl->bpn", positive, weights)


@dataclass
class MatchmapConfig:
    image_encoder: str = "efficientnet_lite0"  # or "resnet" (from backbone:, trained from scratch)
    level: str = "c4"  # EfficientNet-Lite level: c3 (stride 8), c4 (16), c5 / head (32)
    finetune_image_encoder: bool = False  # train EfficientNet too, at lr * backbone_lr_mult (the paper: frozen)
    dim: int = 512  # D, the joint space
    image_hidden: int = 512  # >0: regions go through a 2-layer MLP (1x1 conv, ReLU, 1x1 conv); 0: one 1x1 conv
    normalize: bool = True  # unit-length regions and words, so matchmap entries are cosines in [-1, 1]
    score_pooling: str = "max_region_mean_word"  # see SCORE_POOLINGS
    margin: float = 0.2  # of the triplet ranking loss (on cosines when normalize)
    negatives: str = "hardest"  # "random" (Harwath et al.'s impostors), "hardest" (VSE++) or "all"
    heatmap_words: str = "mean"  # "mean" or "max_weighted", see phrase_heatmaps


@METHODS.register("matchmap")
class Matchmap(FrozenEvalMixin, InContextMixin, JointSpaceGrounder):
    """The matchmap paper's matchmap grounder (see the module docstring). ``class_names`` is unused (captions only)."""

    name = "matchmap"
    config_class = MatchmapConfig
    min_image_side = 32  # EfficientNet-Lite pads like TF "SAME"; below 32 px its last levels are 1 cell

    def __init__(self, config: MatchmapConfig, backbone_config: BackboneConfig, class_names: list[str],
                 inference: InferenceSettings | None = None) -> None:
        super().__init__(config, backbone_config, class_names, inference)
        check_choice(config, "score_pooling", tuple(SCORE_POOLINGS))
        check_choice(config, "negatives", RANKING_NEGATIVES)
        check_choice(config, "heatmap_words", HEATMAP_WORDS)
        if config.dim < 1 or config.image_hidden < 0:
            raise ConfigError("method.params.dim must be >= 1 and image_hidden >= 0")
        self.image_encoder = ImageRegions(config.image_encoder, config.level, config.finetune_image_encoder,
                                          backbone_config)
        # the frozen, shared MiniLM (its word pieces are pooled into words by weakground.text.words)
        self.text_encoder = TEXT_ENCODERS.get("minilm")(TextEncoderOptions())
        self.frozen_modules = frozen_attributes(self, ("text_encoder", "image_encoder"))
        channels = self.image_encoder.out_channels
        # 1x1 convolutions act on each region's channel vector alone: linear layers over channels-last features.
        hidden = config.image_hidden
        self.region_map: nn.Module = (
            nn.Linear(channels, config.dim) if hidden == 0 else
            nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, config.dim))
        )
        self.word_map = nn.Linear(self.text_encoder.out_dim, config.dim)

    # -- the two branches ---------------------------------------------------------------------------------------
    def regions(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``[B, 3, H, W] -> ([B, h*w, D] region embeddings, (h, w))``."""
        return self._map_regions(self.image_encoder(images))

    def _map_regions(self, features: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Encoder features ``[B, C, h, w]`` (computed now or precomputed) -> region embeddings and ``(h, w)``."""
        h, w = features.shape[-2:]
        r = self.region_map(features.flatten(2).transpose(1, 2))
        return (F.normalize(r, dim=-1) if self.config.normalize else r), (h, w)

    def words(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``T texts -> ([T, L, D] word embeddings, [T, L] bool mask)``; see :mod:`weakground.text.words` for
        how pieces become words."""
        emb: WordEmbeddings = encode_words(self.text_encoder, list(texts))
        return self._map_words(emb.hidden, emb.mask)

    def _map_words(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """MiniLM word vectors ``[T, L, 384]`` (computed now or precomputed) and their mask -> word embeddings."""
        device = self.word_map.weight.device
        w = self.word_map(hidden.to(device))
        return (F.normalize(w, dim=-1) if self.config.normalize else w), mask.to(device)

    # -- Grounder interface -------------------------------------------------------------------------------------
    def heatmaps(self, images: Tensor, phrases: list[str], inference: InferenceSettings | None = None) -> Tensor:
        """``[B, P, h, w]`` maps at the encoder's grid (stride 16 for c4). Phrases are encoded alone; an empty or
        punctuation-only phrase has no word and gets a zero map; unknown words are word pieces MiniLM still
        embeds, so they get a map like any other word."""
        images = self.prepare_images(images, inference)
        regions, (h, w) = self.regions(images)
        if not phrases:
            return regions.new_zeros(images.shape[0], 0, h, w)
        words, mask = self.words(phrases)
        maps = phrase_heatmaps(matchmap(regions, words), mask, self.config.heatmap_words)
        return maps.view(images.shape[0], len(phrases), h, w)

    def heatmaps_in_context(self, images: Tensor, sentences: list[str], spans: list[Span],
                            inference: InferenceSettings | None = None) -> Tensor:
        """``[B, P, h, w]``: phrases read inside their captions (each caption encoded whole by MiniLM; a phrase's map
        combines its own words' similarity maps as :meth:`heatmaps` does). ``spans``: see
        :mod:`weakground.methods.phrase_context`."""
        images = self.prepare_images(images, inference)
        regions, (h, w) = self.regions(images)
        if not spans:
            return regions.new_zeros(images.shape[0], 0, h, w)
        words, mask = words_in_context(self.words, self.text_encoder.tokenizer, sentences, spans)
        maps = phrase_heatmaps(matchmap(regions, words), mask, self.config.heatmap_words)
        return maps.view(images.shape[0], len(spans), h, w)

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        """The exact matchmap score ``[B, T]`` (:func:`matchmap_score` with ``score_pooling``):
        :meth:`score_features` of :meth:`score_image_features` and :meth:`score_text_features`."""
        regions = self.score_image_features(images)
        if not texts:
            return regions.new_zeros(images.shape[0], 0)
        return self.score_features(regions, self.score_text_features(texts))

    # -- the exact score in parts: retrieval encodes each image and each caption once (engine/retrieval.py) -------
    def score_image_features(self, images: Tensor) -> Tensor:
        """What :meth:`scores` reads of the images: region embeddings ``[B, N, D]``."""
        return self.regions(self.prepare_images(images))[0]

    def score_text_features(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """What :meth:`scores` reads of the texts: ``(words [T, L, D], mask [T, L])``."""
        return self.words(list(texts))

    def score_features(self, regions: Tensor, text: tuple[Tensor, Tensor]) -> Tensor:
        """``[B, T]`` scores from :meth:`score_image_features` and :meth:`score_text_features`."""
        words, mask = text
        return matchmap_score(matchmap(regions, words), mask, self.config.score_pooling)

    def encode_image(self, images: Tensor) -> Tensor:
        """``[B, D]``: the unit mean of the mapped regions.

        A first-stage approximation for indexing: ``<mean_n r_n, mean_l w_l>`` is the SISA score (mean over both
        axes) of unnormalised means, not the paper's max-over-regions score, which :meth:`scores` computes exactly
        for re-ranking.
        """
        images = self.prepare_images(images)
        regions, _ = self.regions(images)
        return F.normalize(regions.mean(1), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """``[T, D]``: the unit mean of the mapped words (zeros for a text with no word); see :meth:`encode_image`."""
        words, mask = self.words(texts)
        mean = (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(mean, dim=-1)

    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Batch ``{"images": [B, 3, S, S], "captions": B strings}``, caption i describing image i.

        ``total`` is the triplet ranking loss over the batch's ``[B, B]`` matchmap scores; ``accuracy`` the share
        of images whose own caption scores highest in the batch.
        A batch may also carry the frozen encoders' output (``frozen_image:<level>``, ``frozen_text:*``; see
        :mod:`weakground.engine.feature_cache`), which is then read instead of running them.
        """
        images, captions = batch["images"], batch["captions"]
        if len(captions) != images.shape[0]:
            raise ValueError(f"a batch needs one caption per image, got {len(captions)} for {images.shape[0]}")
        scores = self._batch_scores(batch)
        ranking = triplet_ranking_loss(scores, self.config.margin, self.config.negatives)
        target = torch.arange(len(captions), device=scores.device)
        accuracy = (scores.argmax(1) == target).float().mean()
        positive = scores.diagonal().mean()
        return {"total": ranking, "ranking": ranking.detach(), "accuracy": accuracy.detach(),
                "positive_score": positive.detach()}

    def _batch_scores(self, batch: dict[str, Any]) -> Tensor:
        """:meth:`scores` of a training batch, from its precomputed frozen features where it carries them."""
        maps = batch_image_maps(batch, (self.image_encoder.level,))
        if maps is None:
            regions, _ = self.regions(self.prepare_images(batch["images"]))
        else:
            regions, _ = self._map_regions(maps[0])
        text = batch_text_units(batch)
        words, mask = self.words(batch["captions"]) if text is None else self._map_words(text[0], text[1])
        return matchmap_score(matchmap(regions, words), mask, self.config.score_pooling)

    # -- frozen features (weakground.engine.feature_cache) -------------------------------------------------------
    def frozen_feature_spec(self) -> FrozenFeatureSpec:
        """The image side when the encoder is frozen; the text side always (MiniLM never trains here)."""
        encoder = self.image_encoder
        image = frozen_image_identity(encoder.net, (encoder.level,), self.input_size) if encoder.frozen else ""
        return FrozenFeatureSpec(image=image, text="matchmap-words:minilm-l6-v2")

    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> dict[str, Tensor]:
        """``{level: [B, C, h, w]}``: what :meth:`loss` would compute from these images."""
        return {self.image_encoder.level: self.image_encoder(self.prepare_images(images))}

    @torch.no_grad()
    def frozen_text_features(self, texts: list[str]) -> dict[str, Tensor]:
        """``units [T, W, 384]`` (zero-padded word vectors) and their ``lengths [T]``, as :meth:`words` reads them."""
        emb = encode_words(self.text_encoder, list(texts))
        return {"units": emb.hidden, "lengths": unit_lengths(emb.mask)}

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """The mappings at ``lr``; a trainable image encoder (ResNet, or a fine-tuned EfficientNet) at
        ``lr * backbone_lr_mult``; frozen encoders get no group."""
        return trainable_groups(self, self.image_encoder, lr, backbone_lr_mult)
