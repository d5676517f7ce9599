"""Pieces shared by caption-trained methods: a region-feature image encoder and frozen-module bookkeeping.

The image side is either the pretrained EfficientNet-Lite0 read at one tapped level (frozen by default, as the
papers keep their ImageNet CNNs) or the stride-configurable ResNet trained from scratch. Frozen pretrained modules
are held as attributes so ``model.to(device)`` moves them, listed in the method's ``frozen_modules`` so
checkpoints leave them out, and kept in eval mode by :class:`FrozenEvalMixin` so ``model.train()`` never switches
on their dropout, drop-connect or BatchNorm updates.
"""

from __future__ import annotations

from typing import Any

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
