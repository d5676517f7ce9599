"""Pieces shared by caption-trained methods: a region-feature image encoder and frozen-module bookkeeping.

The image side is either the pretrained EfficientNet-Lite0 read at one tapped level (frozen by default, as the
papers keep their ImageNet CNNs) or the stride-configurable ResNet trained from scratch. Frozen pretrained modules
are held as attributes so ``model.to(device)`` moves them, listed in the method's ``frozen_modules`` so
checkpoints leave them out, and kept in eval mode by :class:`FrozenEvalMixin` so ``model.train()`` never switches
on their dropout, drop-connect or BatchNorm updates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import weakground.vision  # noqa: F401  (registers the image encoders in IMAGE_ENCODERS)
from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.registry import IMAGE_ENCODERS

LITE_LEVELS = ("c3", "c4", "c5", "head")  # strides 8, 16, 32, 32 (c2, stride 4 with 24 channels, is too shallow)


def is_frozen(module: nn.Module) -> bool:
    """True when none of ``module``'s weights trains (a shared pretrained encoder): the method keeps it in eval
    mode, gives it no optimizer group and leaves it out of checkpoints."""
    return not any(p.requires_grad for p in module.parameters())


def frozen_attributes(model: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of the attributes ``names`` (in that order) that hold frozen modules: a method's ``frozen_modules``."""
    return tuple(name for name in names if is_frozen(model.get_submodule(name)))


class ImageRegions(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> region features ``[B, C, h, w]``.

    Args:
        kind: a name in :data:`weakground.registry.IMAGE_ENCODERS`: ``"efficientnet_lite0"`` (pretrained, one
            tapped level) or ``"resnet"`` (from ``backbone_config``, trained from scratch, read at its output).
        level: the EfficientNet-Lite level (see :mod:`weakground.vision.efficientnet_lite`).
        finetune: train the pretrained EfficientNet too (it is then its own unfused copy); a ResNet always trains.
        backbone_config: the ResNet's config.
    """

    def __init__(self, kind: str, level: str, finetune: bool, backbone_config: BackboneConfig) -> None:
        super().__init__()
        if kind not in IMAGE_ENCODERS:
            raise ConfigError(f"method.params.image_encoder must be one of {tuple(IMAGE_ENCODERS.names())}, "
                              f"got {kind!r}")
        self.kind, self.level = kind, level
        self.net = IMAGE_ENCODERS.get(kind)(backbone_config, finetune)
        if self.net.selects_level and level not in LITE_LEVELS:  # an encoder read at its output ignores `level`
            raise ConfigError(f"method.params.level must be one of {LITE_LEVELS}, got {level!r}")
        self.out_channels, self.frozen = self.net.feature_channels(level), is_frozen(self.net)

    def forward(self, images: Tensor) -> Tensor:
        # A frozen encoder runs without a graph (see EfficientNetLite.levels).
        return self.net.feature_map(images, self.level)


class FrozenEvalMixin:
    """Keeps every module named in ``frozen_modules`` in eval mode whatever ``train()`` is asked."""

    frozen_modules: tuple[str, ...]

    def train(self, mode: bool = True) -> Any:
        super().train(mode)  # type: ignore[misc]
        for name in self.frozen_modules:
            self.get_submodule(name).eval()  # type: ignore[attr-defined]
        return self


def trainable_groups(model: nn.Module, encoder: nn.Module, lr: float, backbone_lr_mult: float
                     ) -> list[dict[str, Any]]:
    """Optimizer groups: a trainable image encoder at ``lr * backbone_lr_mult``, the rest at ``lr``; frozen
    parameters (``requires_grad`` off) are left out."""
    encoder_ids = {id(p) for p in encoder.parameters()}
    backbone = [p for p in encoder.parameters() if p.requires_grad]
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": head, "lr": lr, "name": "head"}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
    return groups


# -- frozen features precomputed outside the method (weakground.engine.feature_cache) ----------------------------
IMAGE_FEATURES = "frozen_image:"  # batch key prefix: f"frozen_image:{level}" holds the frozen encoder's map
TEXT_FEATURES = "frozen_text:"  # "frozen_text:units" [B, W, E] (zero-padded), ":mask" [B, W], ":sentence" [B, E]


@dataclass(frozen=True)
class FrozenFeatureSpec:
    """What a method can take precomputed in a training batch instead of running a frozen encoder.

    Attributes:
        image: identity of the image features (encoder, weights fingerprint, levels, input handling); empty when
            the image encoder trains, so its features change every step.
        text: identity of the caption features; empty when the text encoder trains or its output is not
            a zero-padded prefix of units (then nothing on the text side is cached).
    """

    image: str = ""
    text: str = ""


def module_fingerprint(module: nn.Module) -> str:
    """sha1 of a module's weights and buffers (names, shapes, dtypes, bytes): the same weights give the same
    value on any machine. Remembered on the module, which is only asked when frozen (its weights never change)."""
    cached = getattr(module, "_weights_fingerprint", None)
    if cached is None:
        digest = hashlib.sha1()
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().cpu().reshape(-1).clone()  # any memory layout (fused weights are channels-last)
            digest.update(f"{name}:{tuple(tensor.shape)}:{data.dtype}\n".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        cached = digest.hexdigest()[:16]
        module._weights_fingerprint = cached  # type: ignore[assignment]
    return cached


def batch_image_maps(batch: dict[str, Any], names: Sequence[str]) -> list[Tensor] | None:
    """The precomputed maps of ``names`` in a training batch, or None when the batch has not all of them."""
    maps = [batch.get(IMAGE_FEATURES + name) for name in names]
    return None if any(m is None for m in maps) else maps  # type: ignore[return-value]


def batch_text_units(batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """The precomputed caption ``(units, mask, sentence or None)`` of a training batch, or None."""
    if TEXT_FEATURES + "units" not in batch:
        return None
    return batch[TEXT_FEATURES + "units"], batch[TEXT_FEATURES + "mask"], batch.get(TEXT_FEATURES + "sentence")


def unit_lengths(mask: Tensor) -> Tensor:
    """``[T, W]`` bool mask -> ``[T]`` unit counts, checking that each row's real units come first (only such
    rows are stored without their mask; see :class:`FrozenFeatureSpec`)."""
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]
    if not torch.equal(prefix, mask.bool()):
        raise ValueError("text units are cached only when each text's real units come first")
    return lengths


def frozen_image_identity(encoder: nn.Module, levels: Sequence[str], input_size: int | None) -> str:
    """The identity of a frozen image encoder's features: its class and variant, a fingerprint of its weights
    (BatchNorm-folded weights differ from unfused ones), the levels read and the square images are resized to
    (None: read at their own size)."""
    name = f"{type(encoder).__qualname__}:{getattr(encoder, 'variant', '')}"
    return f"{name}:weights={module_fingerprint(encoder)}:levels={','.join(levels)}:input={input_size}"
