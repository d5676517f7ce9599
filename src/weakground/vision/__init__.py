"""Image encoders. Importing this package registers the backbones."""

from weakground.vision.resnet import ResNet, build_backbone  # noqa: F401

__all__ = ["ResNet", "build_backbone"]
