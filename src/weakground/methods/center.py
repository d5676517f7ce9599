"""The centre-bias baseline: the same centred Gaussian for every phrase, whatever the image shows.

Photos are framed around their subject, so "point at the middle" is a strong baseline for the pointing game
(Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016, report it as "Center"). Running it
through the same harness as the learned methods shows what a method gains over the framing bias of the data.

The map for an ``H x W`` image, at image resolution::

    m(i, j) = exp(-((j + 0.5 - cx)^2 / (2 (sigma W)^2) + (i + 0.5 - cy)^2 / (2 (sigma H)^2)))
    cx = floor(W / 2) + 0.5,  cy = floor(H / 2) + 0.5

The peak sits on the centre of the pixel that *contains* the image centre ``(W / 2, H / 2)`` (for even sides the
exact centre is a pixel corner, and a Gaussian centred there would tie four pixels). For integer boxes and
tolerance 0 this makes the method's pointing hits exactly those of
:func:`weakground.metrics.center_baseline`, so the harness's own centre baseline checks the harness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weakground.config import BackboneConfig
from weakground.errors import ConfigError, InputError, WeakgroundError
from weakground.methods.base import Grounder, InferenceSettings
from weakground.registry import METHODS


@dataclass
class CenterConfig:
    """Settings of the centre baseline.

    Attributes:
        sigma: the Gaussian's standard deviation as a fraction of the image side it runs along
            (``sigma * W`` horizontally, ``sigma * H`` vertically), ``> 0``. It changes the map's spread
            (attention correctness), never its argmax (the pointing game).
    """

    sigma: float = 0.25


@METHODS.register("center")
class CenterBaseline(Grounder):
    """A non-learned :class:`Grounder` whose heatmap is a centred Gaussian for every phrase."""

    name = "center"
    config_class = CenterConfig
    trainable = False
    min_image_side = 1  # any image has a centre

    def __init__(self, config: CenterConfig, backbone_config: BackboneConfig | None = None,
                 class_names: list[str] | None = None, inference: InferenceSettings | None = None) -> None:
        super().__init__(config, backbone_config or BackboneConfig(in_channels=3), list(class_names or []),
                         inference)
        sigma = config.sigma
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"method.params.sigma must be a positive fraction of the image side, got {sigma!r}")

    def check_images(self, images: Tensor) -> None:
        """Accept any ``[B, C, H, W]`` batch of finite values: the map ignores the pixels and channel count."""
        if images.dim() != 4:
            raise InputError(f"images must be a [B, C, H, W] tensor, got shape {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.min_image_side:
            raise InputError(f"image size {tuple(images.shape[-2:])} is below the minimum side of "
                             f"{self.min_image_side} px for method {self.name!r}")
        if images.is_floating_point() and not torch.isfinite(images).all():
            raise InputError("images contain NaN or infinite values")

    def heatmaps(self, images: Tensor, phrases: list[str], inference: InferenceSettings | None = None) -> Tensor:
        """The centred Gaussian (module docstring) for every phrase of every image.

        Args:
            images: ``[B, C, H, W]``, any channel count and size (only the shape is used).
            phrases: P phrases; their words are ignored.
            inference: not read: the map is drawn at the image's own size (no input square is needed for it).

        Returns:
            ``[B, P, H, W]`` float32 maps in ``(0, 1]`` on ``images.device``, peak 1 at the centre pixel. It is a
            broadcast view of one ``[H, W]`` map (no copy per phrase): ``.clone()`` it before writing in place.
        """
        self.check_images(images)
        b, _, h, w = images.shape
        sigma = float(self.config.sigma)
        device = images.device
        xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5 - (w // 2 + 0.5)
        ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5 - (h // 2 + 0.5)
        gx = torch.exp(-xs.square() / (2.0 * (sigma * w) ** 2))
        gy = torch.exp(-ys.square() / (2.0 * (sigma * h) ** 2))
        return (gy[:, None] * gx[None, :]).expand(b, len(phrases), h, w)

    def _not_trainable(self) -> WeakgroundError:
        return WeakgroundError(f"method {self.name!r} is a fixed baseline with no parameters: it cannot be trained "
                               "(evaluate it with `weakground eval --method center --data FORMAT:PATH`)")

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Not available: the baseline has nothing to learn."""
        raise self._not_trainable()

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Not available: fails before an optimizer is built, with the same message as :meth:`loss`."""
        raise self._not_trainable()
