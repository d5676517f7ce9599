"""Akbari et al.: a multi-level multimodal common semantic space (Akbari et al., "Multi-level Multimodal Common
Semantic Space for Image-Phrase Grounding", CVPR 2019).

    image --EfficientNet-Lite0 (frozen)--> 4 levels (stride 4/8/16/32) --bilinear--> M x M' each
          --per level: 3 x (1x1 conv, LeakyReLU 0.25)--> v [L, N, D], l2-normalised            (Sec. 3.1)
    text  --MiniLM (frozen)--> word vectors --2 FC--> s_t [T, D]; sentence vector --2 FC--> s [D]; l2-normalised

    H[n, t, l] = max(0, <s_t, v_{n,l}>)                  attention: ReLU of the cosine, no softmax    (Eq. 1)
    a_{t,l}    = sum_n H[n, t, l] v_{n,l}                attended visual feature per word and level  (Eq. 2)
    R_{t,l}    = cos(s_t, a_{t,l})                       word-image pertinence at level l            (Eq. 3)
    R_t        = max_l R_{t,l}                           per-word level selection                    (Eq. 4)
    R_w(S, I)  = 1/g1 log sum_t exp(g1 R_t)              word-based sentence-image score, g1 = 5     (Eq. 5)
    R_s(S, I)  = max_l cos(s, sum_n max(0, <s, v_{n,l}>) v_{n,l})       sentence-level score        (Eq. 6)
    L = L_w + L_s, each a softmax over the batch in both directions with g2 = 10   (Eqs. 7-9; losses.py)

The sentence path is the word path with a single "word" (the LSE of one score is that score), so one function,
:func:`multilevel_scores`, computes both; a phrase's heatmap is the attention map H at each word's selected level,
averaged over the words with their pertinence R_t as weights (Sec. 4.3, Flickr30K), or the sentence's own map.

Ablations of the paper's Table 4 are settings: one level (``levels: [middle]`` / ``[last]``), linear mappings
(``nonlinear: false``), softmax attention (``attention: softmax``), a trained BiLSTM over GloVe instead of the
frozen contextual encoder (``text_encoder: bilstm``). See docs/methods/multilevel.md for the deviations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import weakground.text  # noqa: F401  (registers the text encoders in TEXT_ENCODERS)
import weakground.vision  # noqa: F401  (registers the image encoders in IMAGE_ENCODERS)
from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.losses import batch_softmax_loss, log_sum_exp_pool
from weakground.methods.base import InferenceSettings, JointSpaceGrounder, check_choice
from weakground.methods.caption_parts import (FrozenEvalMixin, FrozenFeatureSpec, batch_image_maps, batch_text_units,
                                              frozen_attributes, frozen_image_identity, unit_lengths)
from weakground.methods.phrase_context import InContextMixin, Span, words_in_context
from weakground.registry import IMAGE_ENCODERS, METHODS, TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions

TAPS = ("c2", "c3", "c4", "c5")  # strides 4/8/16/32 (EfficientNet) or the four ResNet stages
# The paper's single-level rows use PNASNet's Cell 7 ("middle": the last cell at stride 16) and Cell 11 ("last").
LEVEL_ALIASES = {"middle": "c4", "last": "c5"}
# The text encoders multilevel offers: the paper's frozen contextual encoder, or its BiLSTM-over-GloVe ablation
# (the bilstm_* settings); both give word states and a sentence vector in one pass (weakground.text.encoders).
SUPPORTED_TEXT_ENCODERS = ("minilm", "bilstm")


@dataclass
class MultilevelConfig:
    image_encoder: str = "efficientnet_lite0"  # or "resnet" (backbone config, trained from scratch)
    freeze_image: bool = True  # EfficientNet frozen as in the paper; False: fine-tuned at lr * backbone_lr_mult
    levels: list[str] = field(default_factory=lambda: list(TAPS))  # names in TAPS (+ "head"), or middle / last
    grid: int = 0  # M: every level is resized to M x M; 0: to the input's stride-`grid_stride` grid (keeps aspect)
    grid_stride: int = 8
    dim: int = 1024  # D, the common space
    leaky_slope: float = 0.25
    nonlinear: bool = True  # False: every mapping is one linear layer (the paper's "linear mapping" rows)
    nonlinear_text: bool = True  # per side, when `nonlinear` is true (the paper's NLT / NLV columns)
    nonlinear_visual: bool = True
    attention: str = "relu"  # "relu": H = max(0, cos) (the paper); "softmax": softmax over locations (ablation)
    softmax_scale: float = 10.0  # softmax attention: softmax_n(scale * cos)
    text_encoder: str = "minilm"  # or "bilstm": trained BiLSTM over GloVe (ablation)
    word_units: str = "words"  # MiniLM: "words" (word pieces mean-pooled into words) or "pieces"
    bilstm_hidden: int = 256  # per direction
    bilstm_layers: int = 1
    gamma_words: float = 5.0  # gamma_1 of the word LSE pooling
    gamma_batch: float = 10.0  # gamma_2 of the batch softmax
    sentence_loss_weight: float = 1.0  # L = L_w + weight * L_s (1 in the paper)
    heatmap: str = "words"  # "words": pertinence-weighted word maps; "sentence": the sentence's map
    word_weights: str = "pertinence"  # "pertinence": R_t / sum R_t (the paper); "softmax": softmax(g1 R_t)
    score: str = "both"  # scores(): "sentence" (R_s), "words" (R_w) or "both" (R_w + R_s, what the loss trains)
    text_chunk: int = 64  # texts scored against the images at once in scores()
    # presence_scores(): "score" (the trained score above) or "score_weakest_word" (that score plus the pertinence
    # R_t of the phrase's least supported word). The LSE pool rewards a phrase for any one word the image shows
    # ("a red square" on a red circle); presence needs every word there. Chosen on validation among five readouts
    # (benchmarks/presence_readouts.py): AUROC 0.909 against 0.900 on the 3-epoch multilevel_cpu checkpoint. The
    # default stays "score" so that checkpoints written before keep the readout their calibration was fitted on.
    presence: str = "score"


class MultilevelScores(NamedTuple):
    """Output of :func:`multilevel_scores` for B images and C texts of up to W words.

    Attributes:
        score: ``[B, C]`` LSE-pooled score (Eq. 5; for a single word, that word's pertinence).
        pertinence: ``[B, C, W]`` R_t = max_l R_{t,l} (Eq. 4).
        level: ``[B, C, W]`` long, the selected level per word.
        attention: ``[B, C, L, N, W]`` H (Eq. 1).
    """

    score: Tensor
    pertinence: Tensor
    level: Tensor
    attention: Tensor


def multilevel_scores(visual: Tensor, words: Tensor, mask: Tensor, gamma: float, attention: str = "relu",
                      softmax_scale: float = 10.0) -> MultilevelScores:
    """Multi-level attention, attended features, pertinence, level selection and LSE pooling (Eqs. 1-5).

    Args:
        visual: ``[B, L, N, D]`` l2-normalised location features v_{n,l} of B images.
        words: ``[C, W, D]`` l2-normalised word features s_t of C texts (padding rows arbitrary).
        mask: ``[C, W]`` bool, True at real words (at least one per text).
        gamma: gamma_1 of the pooling.
        attention: ``"relu"``: ``H = max(0, <s_t, v_n>)`` (Eq. 1); ``"softmax"``: ``softmax_n(scale <s_t, v_n>)``
            (the ablation; a distribution over locations of each level).
        softmax_scale: the softmax's inverse temperature.

    Returns:
        :class:`MultilevelScores`. Attended features are l2-normalised before the cosine; an all-zero attention
        (every location dissimilar) gives a zero attended feature and pertinence 0.
    """
    cosine = torch.einsum("blnd,cwd->bclnw", visual, words)
    if attention == "relu":
        heat = F.relu(cosine)
    else:
        heat = torch.softmax(softmax_scale * cosine, dim=3)
    attended = F.normalize(torch.einsum("bclnw,blnd->bclwd", heat, visual), dim=-1)  # a_{t,l} (Eq. 2)
    per_level = torch.einsum("bclwd,cwd->bclw", attended, words)  # R_{t,l} (Eq. 3)
    pertinence, level = per_level.max(dim=2)  # Eq. 4
    score = log_sum_exp_pool(pertinence, mask[None].expand_as(pertinence), gamma)  # Eq. 5
    return MultilevelScores(score, pertinence, level, heat)


def word_pertinence(visual: Tensor, words: Tensor, mask: Tensor, attention: str = "relu",
                    softmax_scale: float = 10.0) -> Tensor:
    """``[B, C, W]``: each real word's pertinence ``R_t = max_l R_{t,l}`` (Eqs. 1-4; 0 at padding), as
    :func:`multilevel_scores` computes it.

    Retrieval scores every image with every caption, 5 million pairs on the scenes' test split; here each image
    and level costs two matrix products on the real words stacked ``[n, D]`` (``H = relu(S V^T)``, ``A = H V``),
    without the padding, the ``[B, C, L, N, W]`` attention tensor or the permuted copies its einsums make.
    """
    flat = words[mask]  # [n real words, D]: padding would cost as much as words and is masked out anyway
    pertinence = words.new_zeros(visual.shape[0], *mask.shape)
    for b, image in enumerate(visual):  # [L, N, D]
        best: Tensor | None = None
        for level in image:  # [N, D]
            cosine = flat @ level.T  # [n, N]
            heat = F.relu(cosine) if attention == "relu" else torch.softmax(softmax_scale * cosine, dim=1)
            attended = F.normalize(heat @ level, dim=-1)  # a_{t,l} (Eq. 2)
            per_level = (attended * flat).sum(-1)  # R_{t,l} (Eq. 3)
            best = per_level if best is None else torch.maximum(best, per_level)  # Eq. 4
        if best is not None:  # (an encoder with no level gives no score to pool)
            pertinence[b, mask] = best
    return pertinence


def multilevel_score(visual: Tensor, words: Tensor, mask: Tensor, gamma: float, attention: str = "relu",
                     softmax_scale: float = 10.0) -> Tensor:
    """``[B, C]``: :func:`multilevel_scores`' score alone, the same Eqs. 1-5 (equal up to rounding): the LSE pool
    (Eq. 5) of :func:`word_pertinence`."""
    pertinence = word_pertinence(visual, words, mask, attention, softmax_scale)
    return log_sum_exp_pool(pertinence, mask[None].expand_as(pertinence), gamma)


def selected_maps(out: MultilevelScores) -> Tensor:
    """Each word's attention map at its selected level: ``[B, C, L, N, W] -> [B, C, N, W]``."""
    b, c, _, n, w = out.attention.shape
    index = out.level[:, :, None, None, :].expand(b, c, 1, n, w)
    return out.attention.gather(2, index).squeeze(2)


def mapping(in_dim: int, dim: int, layers: int, nonlinear: bool, slope: float) -> nn.Sequential:
    """The common-space mapping: ``layers`` linear layers of width ``dim`` with LeakyReLU between them, or one
    linear layer when not ``nonlinear`` (a stack of linear layers is linear anyway). On ``[..., in_dim]`` inputs a
    linear layer is a 1x1 convolution on channel-last maps, which is how the visual side uses it."""
    if not nonlinear:
        return nn.Sequential(nn.Linear(in_dim, dim))
    modules: list[nn.Module] = []
    for i in range(layers):
        modules.append(nn.Linear(in_dim if i == 0 else dim, dim))
        if i < layers - 1:
            modules.append(nn.LeakyReLU(slope))
    return nn.Sequential(*modules)


@METHODS.register("multilevel")
class Multilevel(FrozenEvalMixin, InContextMixin, JointSpaceGrounder):
    """Akbari et al.'s multi-level common space (see the module docstring)."""

    name = "multilevel"
    config_class = MultilevelConfig
    min_image_side = 32

    def __init__(self, config: MultilevelConfig, backbone_config: BackboneConfig, class_names: list[str],
                 inference: InferenceSettings | None = None) -> None:
        super().__init__(config, backbone_config, class_names, inference)
        self._check_config(config, backbone_config)
        self.level_names = [LEVEL_ALIASES.get(name, name) for name in config.levels]
        # -- image side: EfficientNet frozen (the BN-folded shared copy) unless freeze_image is off; a ResNet trains
        self.image_encoder: nn.Module = IMAGE_ENCODERS.get(config.image_encoder)(backbone_config,
                                                                                 not config.freeze_image)
        self._check_levels(config.levels)
        nonlinear_visual = config.nonlinear and config.nonlinear_visual
        self.visual_maps = nn.ModuleList(
            mapping(self.image_encoder.channels[name], config.dim, 3, nonlinear_visual, config.leaky_slope)
            for name in self.level_names)
        # -- text side (the options are the BiLSTM's; MiniLM reads none)
        self.text_encoder: nn.Module = TEXT_ENCODERS.get(config.text_encoder)(
            TextEncoderOptions(hidden=config.bilstm_hidden, layers=config.bilstm_layers))
        text_dim = self.text_encoder.out_dim
        nonlinear_text = config.nonlinear and config.nonlinear_text
        self.word_map = mapping(text_dim, config.dim, 2, nonlinear_text, config.leaky_slope)
        self.sentence_map = mapping(text_dim, config.dim, 2, nonlinear_text, config.leaky_slope)
        self.frozen_modules = frozen_attributes(self, ("image_encoder", "text_encoder"))  # depends on the config

    @staticmethod
    def _check_config(config: MultilevelConfig, backbone_config: BackboneConfig) -> None:
        check_choice(config, "image_encoder", IMAGE_ENCODERS.names())
        check_choice(config, "text_encoder", SUPPORTED_TEXT_ENCODERS)
        check_choice(config, "attention", ("relu", "softmax"))
        check_choice(config, "word_units", ("words", "pieces"))
        check_choice(config, "heatmap", ("words", "sentence"))
        check_choice(config, "word_weights", ("pertinence", "softmax"))
        check_choice(config, "score", ("sentence", "words", "both"))
        check_choice(config, "presence", ("score", "score_weakest_word"))
        if backbone_config.in_channels != 3:
            raise ConfigError(f"method 'multilevel' reads RGB images: set backbone.in_channels to 3, "
                              f"got {backbone_config.in_channels}")
        for key in ("dim", "grid_stride", "text_chunk", "bilstm_hidden", "bilstm_layers"):
            if getattr(config, key) < 1:
                raise ConfigError(f"method.params.{key} must be >= 1, got {getattr(config, key)}")
        if config.grid < 0:
            raise ConfigError(f"method.params.grid must be >= 0 (0: the stride-grid_stride grid), got {config.grid}")
        for key in ("gamma_words", "gamma_batch", "softmax_scale"):
            if getattr(config, key) <= 0:
                raise ConfigError(f"method.params.{key} must be > 0, got {getattr(config, key)}")

    def _check_levels(self, levels: list[str]) -> None:
        """The configured levels must be distinct levels of the image encoder: EfficientNet-Lite's c2-c5 and head,
        or the ResNet's stages (c2-c5 for four)."""
        allowed = tuple(self.image_encoder.channels)
        bad = [n for n in self.level_names if n not in allowed]
        if not self.level_names or bad or len(set(self.level_names)) != len(self.level_names):
            raise ConfigError(f"method.params.levels must be distinct names among {', '.join(allowed)} "
                              f"(or middle / last), got {levels!r}")

    # -- encoders ----------------------------------------------------------------------------------------------
    def _level_maps(self, images: Tensor) -> list[Tensor]:
        """Raw feature maps ``[B, C_l, h_l, w_l]`` of the configured levels (a frozen encoder's without a graph)."""
        feats = self.image_encoder.levels(images, tuple(self.level_names))
        return [feats[name] for name in self.level_names]

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """M x M' of the common maps for an input of ``height x width`` (see ``MultilevelConfig.grid``)."""
        if self.config.grid > 0:
            return self.config.grid, self.config.grid
        s = self.config.grid_stride
        return -(-height // s), -(-width // s)

    def encode_levels(self, images: Tensor) -> Tensor:
        """Image to the common space: ``[B, 3, H, W] -> v [B, L, N, D]``, unit vectors, ``N = M * M'`` in
        row-major order of the :meth:`grid_size` grid.

        Each level is resized bilinearly to the grid (anti-aliased when it shrinks, so the stride-4 level is
        averaged rather than subsampled), then mapped by its own 1x1-convolution stack (Sec. 3.1).
        """
        return self._map_levels(self._level_maps(images), self.grid_size(*images.shape[-2:]))

    def _map_levels(self, maps: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Raw level maps (computed now or precomputed) -> ``v [B, L, N, D]`` on the ``size`` grid."""
        levels = []
        for raw, mapper in zip(maps, self.visual_maps):
            raw = F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
            levels.append(mapper(raw.flatten(2).transpose(1, 2)))  # [B, N, D]
        return F.normalize(torch.stack(levels, dim=1), dim=-1)

    def encode_words(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Texts to the common space: ``words [C, W, D]`` and ``sentence [C, D]`` (unit vectors) and the word
        ``mask [C, W]`` (bool; at least one word per text, see :func:`weakground.text.minilm.pieces_to_words`)."""
        # MiniLM: words (pieces pooled, word_units "words") or pieces, and its own sentence embedding; the BiLSTM:
        # its tokens and sentence state.
        return self._map_words(*self.text_encoder.states(list(texts), self.config.word_units))

    def _map_words(self, tokens: Tensor, mask: Tensor, sentence: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder states (computed now or precomputed) -> the common space, as :meth:`encode_words`."""
        words = F.normalize(self.word_map(tokens), dim=-1)
        return words, mask, F.normalize(self.sentence_map(sentence), dim=-1)

    def _match(self, visual: Tensor, words: Tensor, mask: Tensor) -> MultilevelScores:
        return multilevel_scores(visual, words, mask, self.config.gamma_words, self.config.attention,
                                 self.config.softmax_scale)

    def _match_sentences(self, visual: Tensor, sentence: Tensor) -> MultilevelScores:
        """Sentence-level results (Eq. 6): the word computation with the sentence as the only word."""
        ones = torch.ones(sentence.shape[0], 1, dtype=torch.bool, device=sentence.device)
        return self._match(visual, sentence[:, None], ones)

    def _pair_scores(self, visual: Tensor, words: Tensor, mask: Tensor, sentence: Tensor
                     ) -> tuple[MultilevelScores, MultilevelScores]:
        """Word-based (Eqs. 1-5) and sentence-level (Eq. 6) results for every image-text pair."""
        return self._match(visual, words, mask), self._match_sentences(visual, sentence)

    # -- the Grounder interface --------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Batch: ``images [B, 3, S, S]`` in [0, 1] and ``captions`` (B texts; caption b describes image b).

        ``L = L_w + L_s`` (Eq. 9), each :func:`weakground.losses.batch_softmax_loss` over the ``[B, B]`` scores of
        every image with every caption of the batch. Precomputed frozen-encoder entries in the batch
        (:mod:`weakground.engine.feature_cache`) are read instead of running the encoders.
        """
        images, captions = batch["images"], list(batch["captions"])
        images = self.prepare_images(images)
        maps = batch_image_maps(batch, self.level_names)
        visual = self.encode_levels(images) if maps is None else \
            self._map_levels(maps, self.grid_size(*images.shape[-2:]))
        text = batch_text_units(batch)
        words, mask, sentence = self.encode_words(captions) if text is None else self._map_words(*text)
        word_out, sentence_out = self._pair_scores(visual, words, mask, sentence)
        loss_words = batch_softmax_loss(word_out.score, self.config.gamma_batch)
        loss_sentence = batch_softmax_loss(sentence_out.score, self.config.gamma_batch)
        total = loss_words + self.config.sentence_loss_weight * loss_sentence
        combined = (word_out.score + sentence_out.score).detach()
        target = torch.arange(combined.shape[0], device=combined.device)
        accuracy = ((combined.argmax(1) == target).float().mean() + (combined.argmax(0) == target).float().mean()) / 2
        return {"total": total, "words": loss_words.detach(), "sentence": loss_sentence.detach(),
                "accuracy": accuracy}

    # -- frozen features (weakground.engine.feature_cache) -------------------------------------------------------
    def frozen_feature_spec(self) -> FrozenFeatureSpec:
        """The image side when EfficientNet is frozen; the text side with the frozen MiniLM read as words (pieces
        are not a prefix of their mask: [CLS] comes first)."""
        image = text = ""
        if "image_encoder" in self.frozen_modules:
            image = frozen_image_identity(self.image_encoder, self.level_names, self.input_size)
        if "text_encoder" in self.frozen_modules and self.config.word_units == "words":
            text = f"multilevel-states:{self.config.text_encoder}:words"
        return FrozenFeatureSpec(image=image, text=text)

    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> dict[str, Tensor]:
        """``{level: [B, C_l, h_l, w_l]}``: the raw maps :meth:`loss` would compute from these images."""
        return dict(zip(self.level_names, self._level_maps(self.prepare_images(images))))

    @torch.no_grad()
    def frozen_text_features(self, texts: list[str]) -> dict[str, Tensor]:
        """``units [T, W, 384]`` (zero-padded word states), their ``lengths [T]`` and ``sentence [T, 384]``."""
        units, mask, sentence = self.text_encoder.states(list(texts), self.config.word_units)
        return {"units": units, "lengths": unit_lengths(mask), "sentence": sentence}

    def heatmaps(self, images: Tensor, phrases: list[str], inference: InferenceSettings | None = None) -> Tensor:
        """Phrase maps ``[B, P, M, M']`` in [0, 1] (``relu``; ``softmax`` attention: a distribution per level).

        ``heatmap: words`` (the paper's Flickr30K protocol): ``sum_t w_t H[:, t, l*_t]`` with
        ``w_t = R_t / sum_t R_t`` (``word_weights: softmax``: ``softmax_t(g1 R_t)``); when every R_t is 0 the
        words count equally. ``heatmap: sentence`` (ReferIt / Visual Genome): the sentence's map at its level.
        """
        images = self.prepare_images(images, inference)
        size = self.grid_size(*images.shape[-2:])
        if not phrases:
            return images.new_zeros((images.shape[0], 0) + size)
        visual = self.encode_levels(images)
        words, mask, sentence = self.encode_words(list(phrases))
        if self.config.heatmap == "sentence":
            maps = selected_maps(self._match_sentences(visual, sentence))[..., 0]
        else:
            maps = self._word_maps(visual, words, mask)
        return maps.reshape(images.shape[0], len(phrases), *size).clamp_min(0)

    def _word_maps(self, visual: Tensor, words: Tensor, mask: Tensor) -> Tensor:
        """``[B, C, N]``: each text's word maps at their selected levels, weighted by :meth:`_word_weights`."""
        out = self._match(visual, words, mask)
        return (selected_maps(out) * self._word_weights(out.pertinence, mask)[:, :, None, :]).sum(-1)

    @property
    def reads_phrases_in_context(self) -> bool:  # type: ignore[override]
        """Only MiniLM's word units map onto a caption's words (the BiLSTM ablation reads GloVe tokens)."""
        return self.config.text_encoder == "minilm" and self.config.word_units == "words"

    def heatmaps_in_context(self, images: Tensor, sentences: list[str], spans: list[Span],
                            inference: InferenceSettings | None = None) -> Tensor:
        """``[B, P, M, M']``: phrases read inside their captions, the paper's Flickr30K protocol (Sec. 4.3): each
        caption is encoded whole, and a phrase's map is its own words' maps weighted by pertinence, as
        ``heatmap: words`` combines them (whatever ``heatmap`` says: a phrase inside a caption has no sentence
        vector of its own). ``spans``: see :mod:`weakground.methods.phrase_context`."""
        if not self.reads_phrases_in_context:
            raise ConfigError("multilevel reads phrases inside their caption with MiniLM word units only "
                              "(text_encoder: minilm, word_units: words)")
        images = self.prepare_images(images, inference)
        size = self.grid_size(*images.shape[-2:])
        if not spans:
            return images.new_zeros((images.shape[0], 0) + size)
        words, mask = words_in_context(lambda texts: self.encode_words(texts)[:2], self.text_encoder.tokenizer,
                                       sentences, spans)
        maps = self._word_maps(self.encode_levels(images), words, mask)
        return maps.reshape(images.shape[0], len(spans), *size).clamp_min(0)

    def _word_weights(self, pertinence: Tensor, mask: Tensor) -> Tensor:
        """``[B, C, W]`` weights of the word maps (sum 1 over each text's real words)."""
        mask = mask[None].expand_as(pertinence)
        if self.config.word_weights == "softmax":
            return torch.softmax(self.config.gamma_words * pertinence.masked_fill(~mask, float("-inf")), dim=-1)
        r = pertinence.clamp_min(0) * mask
        total = r.sum(-1, keepdim=True)
        uniform = mask / mask.sum(-1, keepdim=True)
        return torch.where(total > 0, r / total.clamp_min(1e-12), uniform)

    def encode_image(self, images: Tensor) -> Tensor:
        """``[B, D]``: the mean of the image's mapped location features over all levels and locations,
        normalised. Its dot product with :meth:`encode_text` is ``cos(s, mean_{n,l} v_{n,l})``, the first-stage
        approximation of R_s, which attends with ``max(0, <s, v>)`` instead of averaging uniformly."""
        images = self.prepare_images(images)
        return F.normalize(self.encode_levels(images).mean(dim=(1, 2)), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """``[T, D]``: the mapped, normalised sentence embeddings s."""
        if not texts:
            return torch.zeros(0, self.config.dim, device=self.word_map[0].weight.device)
        return self.encode_words(list(texts))[2]

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        """``[B, T]`` exact scores: R_s, R_w or ``R_w + R_s`` (``MultilevelConfig.score``), ``text_chunk`` texts at
        a time; :meth:`score_features` of :meth:`score_image_features` and :meth:`score_text_features`."""
        visual = self.score_image_features(images)
        columns = [self.score_features(visual, self.score_text_features(texts[start:start + self.config.text_chunk]))
                   for start in range(0, len(texts), self.config.text_chunk)]
        if not columns:
            return visual.new_zeros(visual.shape[0], 0)
        return torch.cat(columns, dim=1)

    # -- the exact score in parts: retrieval encodes each image and each caption once (engine/retrieval.py) -------
    def score_image_features(self, images: Tensor) -> Tensor:
        """What :meth:`scores` reads of the images: ``v [B, L, N, D]``."""
        return self.encode_levels(self.prepare_images(images))

    def score_text_features(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`scores` reads of the texts: ``(words [T, W, D], mask [T, W], sentence [T, D])``."""
        return self.encode_words(list(texts))

    def score_features(self, visual: Tensor, text: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """``[B, T]`` scores from :meth:`score_image_features` and :meth:`score_text_features`."""
        return self._score_and_pertinence(visual, text)[0]

    def _score_and_pertinence(self, visual: Tensor, text: tuple[Tensor, Tensor, Tensor]
                              ) -> tuple[Tensor, Tensor | None]:
        """The configured score ``[B, T]`` and, when it reads the words, their pertinence ``[B, T, W]``."""
        words, mask, sentence = text
        kind, cfg = self.config.score, self.config
        score: Tensor | float = 0.0
        pertinence = None
        if kind in ("words", "both"):
            pertinence = word_pertinence(visual, words, mask, cfg.attention, cfg.softmax_scale)
            score = score + log_sum_exp_pool(pertinence, mask[None].expand_as(pertinence), cfg.gamma_words)
        if kind in ("sentence", "both"):
            ones = torch.ones(sentence.shape[0], 1, dtype=torch.bool, device=sentence.device)
            score = score + multilevel_score(visual, sentence[:, None], ones, cfg.gamma_words, cfg.attention,
                                             cfg.softmax_scale)
        return score, pertinence  # a tensor: `score` is one of the three kinds (checked at construction)

    @torch.no_grad()
    def presence_scores(self, images: Tensor, phrases: list[str], maps: Tensor | None = None) -> Tensor:
        """``[B, P]``: the trained score, plus with ``presence: score_weakest_word`` the pertinence of each
        phrase's least supported word (``MultilevelConfig.presence``)."""
        if self.config.presence == "score":
            return self.scores(images, phrases)
        visual = self.score_image_features(images)
        columns = []
        for start in range(0, len(phrases), self.config.text_chunk):
            text = self.score_text_features(phrases[start:start + self.config.text_chunk])
            score, pertinence = self._score_and_pertinence(visual, text)
            if pertinence is None:  # score "sentence": the words' pertinence is computed for presence alone
                pertinence = word_pertinence(visual, text[0], text[1], self.config.attention,
                                             self.config.softmax_scale)
            weakest = pertinence.masked_fill(~text[1][None], float("inf")).amin(-1)
            columns.append(score + weakest)
        return torch.cat(columns, dim=1) if columns else visual.new_zeros(visual.shape[0], 0)

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Mappings (and a from-scratch ResNet or BiLSTM) at ``lr``; a fine-tuned EfficientNet at
        ``lr * backbone_lr_mult``; frozen encoders not at all."""
        frozen = {id(p) for name in self.frozen_modules for p in self.get_submodule(name).parameters()}
        backbone = self.image_encoder.pretrained_parameters()  # a fine-tuned EfficientNet's weights, else none
        pretrained = {id(p) for p in backbone}
        head = [p for p in self.parameters() if id(p) not in frozen and id(p) not in pretrained]
        groups = [{"params": head, "lr": lr, "name": "mappings"}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
        return groups
