"""The grounded captioner of Hu et al., *Spatial-Semantic Attention for Grounded Image Captioning* (paper 004 in
../shared/seeds), over the Up-Down decoder of Anderson et al. (CVPR 2018), and Up-Down itself as the baseline.

Per image, K regions (``weakground.regions``): features v_i, boxes p_i = [x1, x2, y1, y2, area share] and class
probabilities c_i. At step t, with word embedding E y_{t-1} and the mean feature v_bar:

    h1_t = LSTM_att([h2_{t-1}, v_bar, E y_{t-1}])                       (attention LSTM)
    a_{i,t} = w_a^T ReLU(W_v v_i + W_h h1_t),   alpha_t = softmax_i(a_t)  (Up-Down's top-down attention)
    b_i = w_b^T ReLU([W_c c_i, W_p p_i]),       beta = softmax_i(b)       (SS attention: one value per inner
                                                                           projection; constant over t)
    gamma_t = alpha_t + lambda beta              (lambda 0.5; not renormalised, as the paper writes it)
    v_hat_t = sum_i gamma_{i,t} v_i
    h2_t = LSTM_lang([v_hat_t, h1_t]),           p(y_t) = softmax(W_y h2_t)

    L = L_ce + mu L_gnd,   L_gnd = -sum_i sigma_i log beta_i

where sigma_i = 1 for the region of largest IoU with each ground-truth box of an object the caption mentions
(``grounding: boxes``), or, box-free, for the region under the peak of a weakly supervised grounder's map of each
entity phrase (``grounding: grounder``). Boxes reach training only through sigma, and only when mu > 0.

The word written at step t is grounded in the region of largest gamma_{i,t}. Deviations, all settings: smaller
projections on CPU (the paper: 512), regions from ``weakground.regions`` instead of a Visual Genome Faster R-CNN,
c_i from the bundled ImageNet head instead of detector classes; Table 2's ablations replace p or c by v
(``position_input: v``, ``class_input: v``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.methods.base import Captioner
from weakground.registry import METHODS

GROUNDING_SOURCES = ("boxes", "grounder", "none")
NEG = -1e9  # a logit that softmax turns into an exact zero, without the NaN an -inf row of padding would give


@dataclass
class SSAttentionConfig:
    embed_dim: int = 256  # word embedding E
    hidden: int = 256  # both LSTMs and the projected region features (the paper: 512-d projections)
    attention_dim: int = 256  # inner size of the top-down attention a_{i,t}
    beta: bool = True  # the spatial-semantic prior; False is Up-Down
    lambda_beta: float = 0.5  # lambda in gamma = alpha + lambda beta
    mu: float = 1.0  # weight of L_gnd (0: "SS without L_gnd", Table 1)
    position_input: str = "p"  # "p" (the box) or "v" (Table 2: p replaced by the region feature)
    class_input: str = "c"  # "c" (class probabilities) or "v" (Table 2: c replaced by the region feature)
    dropout: float = 0.3
    max_len: int = 16  # words per caption, training and generation
    min_count: int = 2  # a training word seen fewer times is <unk>
    beam: int = 3  # beam width at test time (1: greedy)
    # Where sigma (L_gnd's targets) comes from: "boxes" (ground-truth boxes, the paper), "grounder" (the peak of
    # grounder_checkpoint's heatmap for each entity phrase: no box at all), "none" (mu must be 0)
    grounding: str = "boxes"
    grounder_checkpoint: str = ""
    regions: dict[str, Any] = field(default_factory=dict)  # weakground.regions.RegionConfig fields
    # object word -> class (GVD's object vocabulary), filled from the training captions by the captioning task
    object_words: dict[str, str] = field(default_factory=dict)


def _masked_softmax(logits: Tensor, valid: Tensor) -> Tensor:
    return torch.softmax(logits.masked_fill(~valid, NEG), dim=-1)


@METHODS.register("ss_attention")
class SSAttentionCaptioner(Captioner):
    """Hu et al.'s captioner (see the module docstring). ``class_names`` is its caption vocabulary (ids 0-3
    ``<pad> <bos> <eos> <unk>``), saved in every checkpoint like a label method's class names."""

    name = "ss_attention"
    config_class: ClassVar[type] = SSAttentionConfig

    def __init__(self, config: SSAttentionConfig, backbone_config: BackboneConfig, class_names: list[str],
                 inference: Any = None, feature_dim: int | None = None) -> None:
        super().__init__()
        self.config, self.backbone_config, self.class_names = config, backbone_config, list(class_names)
        self.inference = inference
        self._check()
        from weakground.regions import RegionConfig, RegionEncoder

        self.region_config = RegionConfig(**config.regions)
        dim, hid = feature_dim or RegionEncoder(self.region_config).channels, config.hidden
        self.feature_proj = nn.Sequential(nn.Linear(dim, hid), nn.ReLU(), nn.Dropout(config.dropout))
        self.embed = nn.Sequential(nn.Embedding(len(self.class_names), config.embed_dim), nn.ReLU(),
                                   nn.Dropout(config.dropout))
        self.att_lstm = nn.LSTMCell(hid + hid + config.embed_dim, hid)
        self.lang_lstm = nn.LSTMCell(hid + hid, hid)
        self.att_v = nn.Linear(hid, config.attention_dim)
        self.att_h = nn.Linear(hid, config.attention_dim)
        self.att_out = nn.Linear(config.attention_dim, 1)
        self.prior_c = nn.Linear(1000 if config.class_input == "c" else hid, 1)  # W_c: to one value
        self.prior_p = nn.Linear(5 if config.position_input == "p" else hid, 1)  # W_p: to one value
        self.prior_out = nn.Linear(2, 1)  # w_b
        # The two inner values pass a ReLU: started negative for every region they would stay there (no gradient
        # through a ReLU at 0) and beta would stay uniform, as it did in a tiny test. They start positive instead.
        for inner in (self.prior_c, self.prior_p):
            nn.init.constant_(inner.bias, 1.0)
        self.drop = nn.Dropout(config.dropout)
        self.output = nn.Linear(hid, len(self.class_names))

    def _check(self) -> None:
        c = self.config
        if len(self.class_names) < 5:
            raise ConfigError(f"method {self.name!r} needs a caption vocabulary (got {len(self.class_names)} words)")
        for key, allowed in (("position_input", ("p", "v")), ("class_input", ("c", "v")),
                             ("grounding", GROUNDING_SOURCES)):
            if getattr(c, key) not in allowed:
                raise ConfigError(f"method.params.{key} must be one of {', '.join(allowed)}, got {getattr(c, key)!r}")
        if c.mu < 0 or c.lambda_beta < 0 or not 0 <= c.dropout < 1 or c.max_len < 1 or c.beam < 1:
            raise ConfigError("method.params: mu and lambda_beta must be >= 0, dropout in [0, 1), max_len and "
                              "beam >= 1")
        if c.mu > 0 and (not c.beta or c.grounding == "none"):
            raise ConfigError("method.params.mu > 0 trains beta with L_gnd: it needs beta: true and grounding "
                              "'boxes' or 'grounder' (mu: 0 for Up-Down and for SS without L_gnd)")
        if c.grounding == "grounder" and c.mu > 0 and not c.grounder_checkpoint:
            raise ConfigError("method.params.grounding 'grounder' needs method.params.grounder_checkpoint")

    # -- the parts of one step ----------------------------------------------------------------------------
    def encode_regions(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Projected features ``V [B, K, D]``, their masked mean, ``W_v V`` and the prior ``beta [B, K]``."""
        valid = batch["valid"]
        feats = self.feature_proj(batch["features"])
        weights = valid.float() / valid.float().sum(1, keepdim=True).clamp(min=1)
        out = {"V": feats, "mean": (weights[..., None] * feats).sum(1), "att_v": self.att_v(feats), "valid": valid}
        if self.config.beta:
            c_in = batch["classes"] if self.config.class_input == "c" else feats
            p_in = batch["positions"] if self.config.position_input == "p" else feats
            prior = self.prior_out(F.relu(torch.cat([self.prior_c(c_in), self.prior_p(p_in)], -1)))[..., 0]
            out["beta"] = _masked_softmax(prior, valid)
        return out

    def step(self, words: Tensor, state: tuple[Tensor, ...], regions: dict[str, Tensor]
             ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """One decoding step: ``words [N]`` -> (logits ``[N, W]``, gamma ``[N, K]``, new state)."""
        h1, c1, h2, c2 = state
        h1, c1 = self.att_lstm(torch.cat([h2, regions["mean"], self.embed(words)], -1), (h1, c1))
        scores = self.att_out(F.relu(regions["att_v"] + self.att_h(h1)[:, None]))[..., 0]
        gamma = _masked_softmax(scores, regions["valid"])
        if self.config.beta:
            gamma = gamma + self.config.lambda_beta * regions["beta"]
        attended = (gamma[..., None] * regions["V"]).sum(1)
        h2, c2 = self.lang_lstm(torch.cat([attended, h1], -1), (h2, c2))
        return self.output(self.drop(h2)), gamma, (h1, c1, h2, c2)

    def initial_state(self, n: int, like: Tensor) -> tuple[Tensor, ...]:
        zeros = like.new_zeros(n, self.config.hidden)
        return zeros, zeros, zeros, zeros

    # -- training -------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch: region ``features [B, K, C]``, ``positions [B, K, 5]``, ``classes [B, K, 1000]``, ``valid
        [B, K]``, ``tokens [B, T]`` (``<bos> .. <eos>`` padded with 0) and, when mu > 0,
        ``grounding_targets [B, K]`` (sigma)."""
        regions = self.encode_regions(batch)
        tokens = batch["tokens"]
        state = self.initial_state(tokens.shape[0], regions["mean"])
        logits = []
        for t in range(tokens.shape[1] - 1):
            out, _, state = self.step(tokens[:, t], state, regions)
            logits.append(out)
        ce = F.cross_entropy(torch.stack(logits, 1).flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
        losses = {"ce": ce}
        total = ce
        if self.config.mu > 0:
            sigma = batch["grounding_targets"]
            has = sigma.sum(1) > 0
            per_image = -(sigma * torch.log(regions["beta"].clamp(min=1e-12))).sum(1)
            losses["gnd"] = per_image[has].mean() if has.any() else ce.new_zeros(())
            total = total + self.config.mu * losses["gnd"]
        losses["total"] = total
        return losses

    # -- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], beam: int | None = None) -> list[tuple[list[int], Tensor]]:
        """Beam search per image: ``(word ids without <bos>/<eos>, gamma [n_words, K])`` for each image."""
        from weakground.methods.beam_search import beam_search

        return beam_search(self, self.encode_regions(batch), beam or self.config.beam, self.config.max_len)


@dataclass
class UpDownConfig(SSAttentionConfig):
    beta: bool = False  # Up-Down: no spatial-semantic prior, so nothing for L_gnd to train
    mu: float = 0.0
    grounding: str = "none"


@METHODS.register("updown")
class UpDownCaptioner(SSAttentionCaptioner):
    """Anderson et al.'s Up-Down captioner: :class:`SSAttentionCaptioner` with the prior beta off (Hu et al.'s
    baseline, Table 1)."""

    name = "updown"
    config_class = UpDownConfig
