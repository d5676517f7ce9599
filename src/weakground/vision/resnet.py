"""A ResNet-18 family with configurable widths, strides and max pooling.

torchvision does not import with the CPU torch used here, so the few pieces are written out. Fang et al. removes max
pooling and sets every stride to 1 so the attention map keeps the input's resolution; that is
``stem_stride=1, stage_strides=[1, 1, 1, 1], maxpool=False``. Stride 1 at full width is costly on a CPU, so the
presets for small machines trade resolution (``stage_strides``) and width (``widths``) for speed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from weakground.config import BackboneConfig
from weakground.registry import BACKBONES, IMAGE_ENCODERS


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet feature extractor: ``forward(images[B,C,H,W]) -> features[B, widths[-1], H/s, W/s]``.

    ``s = stem_stride * prod(stage_strides) * (2 if maxpool)`` is :attr:`stride`.

    As an image encoder of :data:`weakground.registry.IMAGE_ENCODERS` its levels are its stages' outputs, named
    like EfficientNet-Lite's by position: ``c2`` (the first stage), ``c3``, ... (:attr:`channels`, :meth:`levels`).
    A single-level method reads its output, whatever level it names (:meth:`feature_map`): the ``level``
    settings choose among EfficientNet-Lite's levels, and this network's shape is set by ``backbone:`` instead.
    """

    selects_level: ClassVar[bool] = False  # feature_map is the network's output, whatever level is asked

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if len(config.blocks) != len(config.widths) or len(config.widths) != len(config.stage_strides):
            raise ValueError("backbone: blocks, widths and stage_strides must have the same length")
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.widths[0], 3, config.stem_stride, 1, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(inplace=True),
        )
        self.pool: nn.Module = nn.MaxPool2d(3, 2, 1) if config.maxpool else nn.Identity()
        stages = []
        in_ch = config.widths[0]
        for n_blocks, width, stride in zip(config.blocks, config.widths, config.stage_strides):
            blocks = [BasicBlock(in_ch, width, stride)] + [BasicBlock(width, width, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_ch
        self.channels = {f"c{i + 2}": width for i, width in enumerate(config.widths)}
        self.stride = config.stem_stride * (2 if config.maxpool else 1)
        for s in config.stage_strides:
            self.stride *= s
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        return self.stages(self.pool(self.stem(images)))

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """None: the ResNet trains from scratch (at the method's own learning rate)."""
        return []

    def levels(self, images: Tensor, names: tuple[str, ...] | list[str]) -> dict[str, Tensor]:
        """``{name: [B, channels[name], h, w]}``, the outputs of the named stages. Every stage runs, as in
        :meth:`forward`, so training updates the same BatchNorm statistics whichever stages are read."""
        unknown = [name for name in names if name not in self.channels]
        if unknown:
            raise ValueError(f"unknown ResNet level {unknown[0]!r}; known: {', '.join(self.channels)}")
        x = self.pool(self.stem(images))
        out = {}
        for name, stage in zip(self.channels, self.stages):
            x = stage(x)
            if name in names:
                out[name] = x
        return out

    def feature_map(self, images: Tensor, level: str) -> Tensor:
        """The network's output; ``level`` is not read (see the class docstring)."""
        return self(images)

    def feature_channels(self, level: str) -> int:
        return self.out_channels


class DigitClassifier(nn.Module):
    """Backbone + global average pooling + linear layer, for single-digit pretraining (Fang et al., stage 1)."""

    def __init__(self, backbone: ResNet, n_classes: int = 10) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, n_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.backbone(images).mean(dim=(2, 3)))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self(batch["images"])
        ce = nn.functional.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return {"total": ce, "accuracy": accuracy.detach()}

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr}]


@BACKBONES.register("resnet")
def build_resnet(config: BackboneConfig) -> ResNet:
    return ResNet(config)


def build_backbone(config: BackboneConfig) -> nn.Module:
    return BACKBONES.get(config.name)(config)


@IMAGE_ENCODERS.register("resnet")
def build_resnet_encoder(backbone_config: BackboneConfig, finetune: bool) -> nn.Module:
    """The image encoder ``resnet``: the ``backbone:`` network, trained from scratch (it always trains, so
    ``finetune`` is not read)."""
    return build_backbone(backbone_config)
