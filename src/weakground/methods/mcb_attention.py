"""Fang et al.: weakly supervised attention learning with compact bilinear pooling (Fang et al.).

    image --ResNet--> f [C, h, w]            query --(one-hot | bag of words)--> dense 128 --tile--> t
    MCB(f(x, y), t) --1x1 conv, ReLU, 1x1 conv, sigmoid--> r(x, y)           one-channel attention map
    f' = mean_{x,y} r(x, y) f(x, y) --linear--> class scores                 must name the queried class

Only the image-level label (which digits are in the image) supervises training: the classifier can name the
queried digit from the attended features only if the attention sits on that digit, so the map learns where the
digit is. L = L_ce + lambda * L_pair + beta * R (Eqs. 1-3).

With ``query: caption`` the same attention learns from captions instead of labels: ``create_method`` then builds
its caption variant, :class:`weakground.methods.mcb_captions.MCBCaptionAttention` (listed in
:attr:`MCBAttention.variants` by that module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.fusion.mcb import CompactBilinearPooling
from weakground.losses import attention_sparsity, pair_loss
from weakground.methods.base import Grounder, InferenceSettings, check_choice
from weakground.registry import METHODS
from weakground.text.queries import BagOfWordsQuery, OneHotQuery, label_phrase, PHRASE_TEMPLATES
from weakground.vision.resnet import build_backbone

# Largest fused MCB tensor built at once (elements): 2^27 floats = 512 MiB; see MCBAttention.attend.
FUSED_ELEMENTS_PER_CHUNK = 2**27
# Weights of the loss terms that read the label classifier (label mode only; the caption mode refuses them).
CLASSIFIER_TERMS = ("mining", "erasing", "preserving")


@dataclass
class MCBAttentionConfig:
    query: str = "onehot"  # "onehot" (the paper) or "phrase" (bag of words over the label's words)
    word_dim: int = 64  # phrase encoder's word vectors
    query_dim: int = 128  # the paper's 128-unit dense layer
    mcb_dim: int = 1024  # d, the compact bilinear output size
    hidden: int = 64  # channels of the first 1x1 convolution
    lambda_pair: float = 0.1
    beta: float = 0.1
    margin: float = 0.5  # m of the pair loss, on L2-normalised features (distances in [0, 2])
    queries_per_image: int = 1  # present labels asked per image per step (the backbone runs once for all)
    absent_queries: int = 0  # >0: also ask absent labels, to be classified as "absent" (not in the paper)
    mcb_seed: int = 0
    # After MCB: "signed_sqrt_l2" (Fukui et al.'s MCB), or "l2" alone, which lets the first 1x1 convolution be
    # folded into the sketch product (CompactBilinearPooling.fused_linear: equal to forming the normalised
    # d-vectors and applying the layer, without them; 4.7x faster cpu-preset training steps on 2 cores,
    # benchmarks/results/mcb_steptime.json).
    mcb_post: str = "signed_sqrt_l2"
    pooling: str = "mean"  # "mean": f' = mean r f (the paper); "normalized": f' = sum r f / sum r
    # Weight of the attention-mining term (not in the paper; label mode only): the features the map leaves out,
    # pooled with 1 - r, should not name the queried digit. See MCBAttention.loss.
    mining: float = 0.0
    # Weight of the erasing term (not in the paper; label mode only): the image with the first present query's map
    # erased, seen by the model with its weights held fixed, must no longer show the digit. See erasing_loss.
    erasing: float = 0.0
    # Weight of the preserving term (not in the paper; label mode only): the image with everything *outside* the
    # first present query's map erased, seen by the fixed model, must still show the digit. See preserving_loss.
    preserving: float = 0.0
    # Which classifier outputs have a bias: "all" (the paper's plain linear layer) or "absent" (only the "absent"
    # output; needs absent_queries > 0). With a bias on a digit's output, an empty map (attended features near 0)
    # can name that digit, and a strong area term (beta) then kills its map for good: at beta 1.6 with erasing,
    # every "9" map died (peak 0.007) and the bias answered "9" to every "9" query, present or absent. With
    # "absent", an empty map means "absent" and a digit is named only by what its map holds.
    classifier_bias: str = "all"
    # Caption mode (query: caption) only; see weakground.methods.mcb_captions.
    image_encoder: str = "efficientnet_lite0"  # or "resnet" (from backbone:, trained from scratch)
    level: str = "c4"  # EfficientNet-Lite level: c3 (stride 8), c4 (16), c5 / head (32)
    finetune_image_encoder: bool = False  # train EfficientNet too, at lr * backbone_lr_mult
    joint_dim: int = 256  # the joint image-text space of the ranking loss
    ranking_margin: float = 0.2  # margin of the triplet ranking loss (on cosines)
    negatives: str = "hardest"  # in-batch negatives: "random", "hardest" or "all" (losses.triplet_ranking_loss)
    # "sentence": the caption's MiniLM sentence embedding is the one query; "words": each word of the caption is a
    # query of its own, as one label is in the paper, and the caption's score pools the words' (see mcb_captions)
    caption_queries: str = "sentence"
    gamma_words: float = 5.0  # the word pooling's gamma (caption_queries: words), Akbari et al.'s gamma_1


class AbsentBiasLinear(nn.Module):
    """A linear layer whose only bias is on its last output, the "absent" class.

    Attended features near 0 (an empty map) then score every digit 0 and leave the answer to the absent bias, so
    a digit can be named only by what its map holds (see ``MCBAttentionConfig.classifier_bias``).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)  # nn.Linear's initialisation of the weights
        self.weight = linear.weight
        self.absent_bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        logits = F.linear(x, self.weight)
        return torch.cat([logits[..., :-1], logits[..., -1:] + self.absent_bias], dim=-1)


@METHODS.register("mcb_attention")
class MCBAttention(Grounder):
    name = "mcb_attention"
    config_class = MCBAttentionConfig

    # One registered name, one config: a `query` named here selects a subclass (create_method asks
    # concrete_class), so checkpoints and the CLI need no special case. mcb_captions adds "caption" when imported
    # (weakground.methods imports it), so this module never imports its variants.
    variants: ClassVar[dict[str, type[Grounder]]] = {}

    @classmethod
    def concrete_class(cls, config: MCBAttentionConfig) -> type[Grounder]:
        return cls.variants.get(config.query, cls) if cls is MCBAttention else cls

    def __init__(self, config: MCBAttentionConfig, backbone_config: BackboneConfig, class_names: list[str],
                 inference: InferenceSettings | None = None) -> None:
        super().__init__(config, backbone_config, class_names, inference)
        if config.query not in ("onehot", "phrase"):
            raise ConfigError(f"method.params.query must be 'onehot', 'phrase' or 'caption', got {config.query!r}")
        self._check_pooling()
        for key in CLASSIFIER_TERMS:
            if not getattr(config, key) >= 0:
                raise ConfigError(f"method.params.{key} must be >= 0, got {getattr(config, key)}")
        check_choice(config, "classifier_bias", ("all", "absent"))
        if config.classifier_bias == "absent" and config.absent_queries <= 0:
            raise ConfigError("method.params.classifier_bias 'absent' needs method.params.absent_queries > 0")
        self.backbone = build_backbone(backbone_config)
        channels = self.backbone.out_channels
        self.query_encoder: nn.Module = (
            OneHotQuery(class_names) if config.query == "onehot" else BagOfWordsQuery(class_names, config.word_dim)
        )
        self._build_attention(channels, self.query_encoder.out_dim)
        n_outputs = len(class_names) + (1 if config.absent_queries > 0 else 0)
        absent_only = config.classifier_bias == "absent"
        self.classifier: nn.Module = (AbsentBiasLinear if absent_only else nn.Linear)(channels, n_outputs)

    def _check_pooling(self) -> None:
        if self.config.pooling not in ("mean", "normalized"):
            raise ConfigError(f"method.params.pooling must be 'mean' or 'normalized', got {self.config.pooling!r}")

    def _build_attention(self, channels: int, query_in: int) -> None:
        """The query's dense layer, MCB fusion and the two 1x1 convolutions (shared with the caption mode)."""
        config = self.config
        self.query_dense = nn.Linear(query_in, config.query_dim)
        check_choice(config, "mcb_post", ("signed_sqrt_l2", "l2"))
        self.mcb = CompactBilinearPooling(channels, config.query_dim, config.mcb_dim, post=config.mcb_post,
                                          seed=config.mcb_seed)
        # The two 1x1 convolutions act on each position's d-vector independently: linear layers over the last
        # axis compute the same thing without moving the d axis next to the batch axis.
        self.attention_hidden = nn.Linear(config.mcb_dim, config.hidden)
        self.attention_out = nn.Linear(config.hidden, 1)

    # -- grounding ---------------------------------------------------------------------------------------------
    def _query_vectors(self, phrases: list[str]) -> Tensor:
        q = self.query_encoder(phrases).to(self.query_dense.weight.device)
        return F.relu(self.query_dense(q))

    def attend(self, features: Tensor, queries: Tensor) -> Tensor:
        """Attention maps for per-image queries.

        Args:
            features: ``[B, C, h, w]`` backbone features.
            queries: ``[B, P, query_dim]`` (or ``[P, query_dim]``, shared by all images).

        Returns:
            ``[B, P, h, w]`` attention in (0, 1).

        The fused tensor is ``[B, P, h, w, d]``: at the paper's stride 1 on 3x3 grids that is 64 x 2 x 84 x 84 x
        2048 floats (7 GiB) per copy, and the FFT, square root and normalisation keep several copies for the
        backward pass. Large inputs are therefore fused a few images (and queries) at a time; while training,
        each piece is recomputed in the backward pass (activation checkpointing) instead of being kept.
        """
        b, _, h, w = features.shape
        p = queries.shape[-2]
        # the fused path (mcb_post "l2") never forms the d-vectors; its widest tensor is [.., hidden]
        per_pair = h * w * (self.config.hidden if self.mcb.fuses_linear else self.config.mcb_dim)
        if b * p * per_pair <= FUSED_ELEMENTS_PER_CHUNK:
            return self._attend(features, queries)
        q_step = max(1, min(p, FUSED_ELEMENTS_PER_CHUNK // per_pair))
        b_step = max(1, FUSED_ELEMENTS_PER_CHUNK // (q_step * per_pair))
        rows = []
        for i in range(0, b, b_step):
            f = features[i:i + b_step]
            q_rows = queries if queries.dim() == 2 else queries[i:i + b_step]
            pieces = []
            for j in range(0, p, q_step):
                q = q_rows[..., j:j + q_step, :]
                if torch.is_grad_enabled():
                    pieces.append(checkpoint(self._attend, f, q, use_reentrant=False))
                else:
                    pieces.append(self._attend(f, q))
            rows.append(torch.cat(pieces, dim=1))
        return torch.cat(rows, dim=0)

    def _attend(self, features: Tensor, queries: Tensor) -> Tensor:
        h, w = features.shape[-2:]
        if queries.dim() == 2:
            queries = queries[None]
        if self.mcb.fuses_linear:
            visual = features.flatten(2).transpose(1, 2)  # [B, h*w, C]
            hidden = self.mcb.fused_linear(visual, queries, self.attention_hidden)  # [B, P, h*w, hidden]
            hidden = hidden.unflatten(2, (h, w))
        else:
            visual = features.permute(0, 2, 3, 1)[:, None]  # [B, 1, h, w, C]
            text = queries[:, :, None, None, :]  # [B|1, P, 1, 1, q]
            hidden = self.attention_hidden(self.mcb(visual, text))  # [B, P, h, w, d] -> [.., hidden]
        logits = self.attention_out(F.relu(hidden))
        return torch.sigmoid(logits.squeeze(-1))

    def heatmaps(self, images: Tensor, phrases: list[str], inference: InferenceSettings | None = None) -> Tensor:
        images = self.prepare_images(images, inference)
        if not phrases:
            return images.new_zeros((images.shape[0], 0) + tuple(images.shape[-2:]))
        return self._phrase_maps(self.backbone(images), phrases)

    def _phrase_maps(self, features: Tensor, phrases: list[str]) -> Tensor:
        """``[B, P, h, w]``: each phrase's attention map (the caption mode's word queries mix several)."""
        return self.attend(features, self._query_vectors(phrases))

    def pooled(self, features: Tensor, attention: Tensor) -> Tensor:
        """Attended features: ``[B, C, h, w] x [B, P, h, w] -> [B, P, C]``.

        ``mean`` (the paper) divides ``sum r f`` by the number of positions, so more attention mass gives the
        classifier a stronger signal. ``normalized`` divides by ``sum r`` instead: the classifier sees the
        attention-weighted average feature, which spreading attention over background only dilutes, so the map
        is pushed onto the object itself.
        """
        weighted = torch.einsum("bchw,bphw->bpc", features, attention)
        if self.config.pooling == "normalized":
            return weighted / (attention.sum(dim=(2, 3))[..., None] + 1e-3)
        return weighted / attention[0, 0].numel()

    # -- training ----------------------------------------------------------------------------------------------
    def _phrases_for(self, labels: Tensor) -> list[str]:
        """Training queries: the class name (one-hot), or a random phrasing of it (phrase encoder)."""
        flat = labels.reshape(-1).tolist()
        if self.config.query == "onehot":
            return [self.class_names[i] for i in flat]
        templates = torch.randint(len(PHRASE_TEMPLATES), (len(flat),)).tolist()
        return [label_phrase(i, self.class_names, t) for i, t in zip(flat, templates)]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch: ``images [B, C, H, W]``, ``labels [B, P]`` present labels to query, optionally
        ``absent [B, A]`` labels not in the image (used when ``absent_queries > 0``)."""
        images, labels = batch["images"], batch["labels"]
        targets = labels
        if self.config.absent_queries > 0 and "absent" in batch:
            labels = torch.cat([labels, batch["absent"]], dim=1)
            absent_class = torch.full_like(batch["absent"], len(self.class_names))
            targets = torch.cat([targets, absent_class], dim=1)
        b, p = labels.shape
        features = self.backbone(images)
        queries = self._query_vectors(self._phrases_for(labels)).view(b, p, -1)
        attention = self.attend(features, queries)
        attended = self.pooled(features, attention)  # [B, P, C]
        logits = self.classifier(attended)
        ce = F.cross_entropy(logits.reshape(b * p, -1), targets.reshape(-1))
        n_present = batch["labels"].shape[1]
        pair = pair_loss(attended[:, :n_present].reshape(-1, attended.shape[-1]), batch["labels"].reshape(-1),
                         self.config.margin)
        sparsity = attention_sparsity(attention)
        total = ce + self.config.lambda_pair * pair + self.config.beta * sparsity
        accuracy = (logits.argmax(-1) == targets).float().mean()
        parts = {"ce": ce.detach(), "pair": pair.detach(), "sparsity": sparsity.detach()}
        if self.config.mining > 0:
            mining = self.mining_loss(features, attention[:, :n_present], batch["labels"])
            total = total + self.config.mining * mining
            parts["mining"] = mining.detach()
        if self.config.erasing > 0:
            erasing = self.erasing_loss(images, attention[:, 0], queries[:, 0], batch["labels"][:, 0])
            total = total + self.config.erasing * erasing
            parts["erasing"] = erasing.detach()
        if self.config.preserving > 0:
            preserving = self.preserving_loss(images, attention[:, 0], queries[:, 0], batch["labels"][:, 0])
            total = total + self.config.preserving * preserving
            parts["preserving"] = preserving.detach()
        return {"total": total, **parts, "accuracy": accuracy.detach()}

    def mining_loss(self, features: Tensor, attention: Tensor, labels: Tensor) -> Tensor:
        """Mean probability that the features *outside* each present query's map still name the queried digit.

        The classification loss alone is satisfied once the map holds enough of the digit to name it, so maps
        settle on a digit's most telling strokes and leave the rest (boxes come out small and off-centre). Pooling
        the complement ``1 - r`` and asking the same classifier *not* to find the digit there pushes the map over
        the whole digit. This is the attention-mining idea of GAIN (Li et al., "Tell Me Where to Look", CVPR 2018)
        and of adversarial erasing, applied to backbone features instead of a masked, re-encoded image, so it
        costs one more pooling rather than another backbone pass.

        Args:
            features: ``[B, C, h, w]``; attention: ``[B, P, h, w]`` maps of the present queries;
            labels: ``[B, P]`` the queried digits.
        """
        rest_logits = self.classifier(self.pooled(features, 1.0 - attention))
        return rest_logits.softmax(-1).gather(-1, labels[..., None]).mean()

    def erasing_loss(self, images: Tensor, attention: Tensor, queries: Tensor, labels: Tensor) -> Tensor:
        """Mean probability that the model still finds each queried digit once its map is erased from the image.

        The image is multiplied by ``1 - r`` (the map upsampled to the image) and run through the whole model
        again, asked the same query, **with its weights held fixed**: the gradient reaches only the map, so the
        model cannot learn to answer "absent" whenever it sees an erased patch. The map must then cover every
        stroke of the digit (a stroke left over still names it), and the area term R makes covering blank
        background a pure cost, so the map is pulled from the digit's whole cell onto its ink. Image-space
        erasing as in adversarial erasing (Wei et al., CVPR 2017) and the deletion game of Fong & Vedaldi (ICCV
        2017); unlike :meth:`mining_loss` it re-encodes the image, because backbone features already see
        past a digit's strokes, so erasing in feature space asks the map to cover the halo as well.

        Args:
            images: ``[B, C, H, W]``; attention: ``[B, h, w]``, one present query's map per image;
            queries: ``[B, query_dim]`` that query's vectors; labels: ``[B]`` the queried digits.
        """
        erased = images * (1.0 - self._image_mask(attention, images))
        return self._frozen_logits(erased, queries).softmax(-1).gather(-1, labels[:, None]).mean()

    def preserving_loss(self, images: Tensor, attention: Tensor, queries: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the queried digit on the image with everything *outside* its map erased.

        The counterpart of :meth:`erasing_loss` (same fixed weights, same query): the image multiplied by ``r``
        must still show the digit. Erasing alone rewards the smallest region whose removal hides the digit, and
        with a strong area term the maps shrink to a band across the digit's middle; a band alone does not show
        the digit, so this term asks the map to keep enough of the strokes to name it. Together they are the
        "smallest sufficient and destroying region" of Dabkowski & Gal (NeurIPS 2017) and Fong & Vedaldi.
        On 2x2 multi-MNIST it did not undo the band (docs/methods/mcb_attention.md, "Maps on the ink"): one telling stroke, such as a
        "2"'s base, already names the digit for the fixed model. Arguments as for :meth:`erasing_loss`.
        """
        kept = images * self._image_mask(attention, images)
        return F.cross_entropy(self._frozen_logits(kept, queries), labels)

    @staticmethod
    def _image_mask(attention: Tensor, images: Tensor) -> Tensor:
        """``[B, h, w]`` maps upsampled bilinearly to ``[B, 1, H, W]``, the images' size."""
        return F.interpolate(attention[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _frozen_logits(self, images: Tensor, queries: Tensor) -> Tensor:
        """Class scores ``[B, K]`` for one query per image, from the model with its weights held fixed.

        Gradients still flow into ``images`` (and so into the map that masked them), never into the weights.
        """
        weights = [p for p in self.parameters() if p.requires_grad]
        for p in weights:
            p.requires_grad_(False)
        try:
            features = self.backbone(images)
            logits = self.classifier(self.pooled(features, self.attend(features, queries.detach()[:, None])))
        finally:
            for p in weights:
                p.requires_grad_(True)
        return logits[:, 0]

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """The pretrained backbone learns at ``lr * backbone_lr_mult`` (1/10 in the paper), the rest at ``lr``."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"},
                {"params": head, "lr": lr, "name": "head"}]
