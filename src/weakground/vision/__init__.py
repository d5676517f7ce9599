"""Image encoders. Importing this package registers the backbones (BACKBONES) and the image encoders the caption
methods choose by name (IMAGE_ENCODERS: "efficientnet_lite0", "resnet")."""

from weakground.vision import efficientnet_lite  # noqa: F401  (registers "efficientnet_lite0")
from weakground.vision.resnet import ResNet, build_backbone  # noqa: F401  (registers "resnet")

__all__ = ["ResNet", "build_backbone", "efficientnet_lite"]
