"""The Grounder interface that every method implements, and the short factory that builds one."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from weakground.config import BackboneConfig, from_dict
from weakground.errors import ConfigError, InputError
from weakground.metrics import resize_heatmap
from weakground.registry import METHODS


class Grounder(nn.Module):
    """Base class of grounding methods.

    The evaluators only ever call :meth:`grounding_maps` (which calls :meth:`heatmaps`); the training engine only
    calls :meth:`loss` and :meth:`param_groups`. Methods with a joint image-text space also implement
    :meth:`encode_image`, :meth:`encode_text` and :meth:`scores`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    # Evaluators read these flags instead of calling a method and catching NotImplementedError.
    # False: a fixed method (a baseline, or `bridge` on pretrained parts as they are), built without a checkpoint.
    trainable: ClassVar[bool] = True
    has_joint_space: ClassVar[bool] = False  # True: encode_image / encode_text / scores are implemented
    # Attributes holding frozen pretrained modules (loaded from their packages on construction): checkpoints
    # leave them out, see weakground.engine.checkpoint.checkpointed_state.
    frozen_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, backbone_config: BackboneConfig, class_names: list[str]) -> None:
        super().__init__()
        self.config = config
        self.backbone_config = backbone_config
        self.class_names = list(class_names)

    min_image_side: ClassVar[int] = 16
    # Side of the square every image is resized to before the method sees it (None: as given). Caption methods
    # train on data.image_size squares; their frozen encoders' features and the mappings learned on them suit
    # that scale: on the scenes, multilevel and matchmap point better reading a 224-px image resized than at its
    # own size (dsve_loc does not; `python benchmarks/methods.py inference`). The caption pipeline and
    # load_grounder set it from the config (data.image_size, data.eval_resize); prepare_images applies it.
    input_size: int | None = None
    # n > 1: grounding_maps averages the heatmaps of n x n copies of the image, shifted by multiples of 1/n of the
    # feature map's stride (test-time shift averaging). A stride-8 map's peak can only sit on its cell centres;
    # the shifted copies put other pixels under the cells, so the average's peak can fall between them. Set like
    # input_size, from eval.shift_average (see weakground.engine.pipeline.configure_inference).
    shift_average: int = 1

    def check_images(self, images: Tensor) -> None:
        """Reject images the method cannot read, with one line saying what is wrong."""
        if images.dim() != 4:
            raise InputError(f"images must be a [B, C, H, W] tensor, got shape {tuple(images.shape)}")
        channels = self.backbone_config.in_channels
        if images.shape[1] != channels:
            raise InputError(f"images have {images.shape[1]} channel(s); method {self.name!r} was built for {channels}")
        if min(images.shape[-2:]) < self.min_image_side:
            raise InputError(f"image size {tuple(images.shape[-2:])} is below the minimum side of "
                             f"{self.min_image_side} px for method {self.name!r}")
        if not torch.isfinite(images).all():
            raise InputError("images contain NaN or infinite values")

    def prepare_images(self, images: Tensor) -> Tensor:
        """:meth:`check_images`, then the :attr:`input_size` square, resized as training resized its images
        (bilinear with antialiasing, like PIL's bilinear resize); unchanged when no size is set or it already fits.
        Heatmaps come out at the square's feature grid: callers resize them to the image as always."""
        self.check_images(images)
        size = self.input_size
        if size is None or tuple(images.shape[-2:]) == (size, size):
            return images
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def heatmaps(self, images: Tensor, phrases: list[str]) -> Tensor:
        """Ground every phrase in every image.

        Args:
            images: ``[B, C, H, W]`` float images.
            phrases: P phrases (or labels), asked of every image.

        Returns:
            ``[B, P, h, w]`` non-negative maps at the method's feature resolution; resize with
            :func:`weakground.metrics.resize_heatmap`.
        """
        raise NotImplementedError

    def grounding_maps(self, images: Tensor, phrases: list[str]) -> Tensor:
        """What the evaluators, ``locate`` and ``serve`` ask for: :meth:`heatmaps`, or with :attr:`shift_average`
        n > 1 their average over n x n shifted copies of the image.

        Returns:
            ``[B, P, h, w]``: the method's own grid when n is 1, else the (prepared) image's full resolution.
            Either way, resize with :func:`weakground.metrics.resize_heatmap`.
        """
        n = self.shift_average
        if n <= 1 or not phrases:
            return self.heatmaps(images, phrases)
        images = self.prepare_images(images)  # once: the copies are then already at input_size
        height, width = images.shape[-2:]
        first = self.heatmaps(images, phrases)
        stride_y, stride_x = height / first.shape[-2], width / first.shape[-1]
        total, copies = resize_heatmap(first, (height, width)), 1
        for i in range(n):
            for j in range(n):
                dy, dx = round(i * stride_y / n), round(j * stride_x / n)
                if (dy, dx) == (0, 0):  # the unshifted copy (or a stride too small to split)
                    continue
                # Content moves down/right by (dy, dx) (edge pixels repeated), so the map is read back from
                # (dy, dx) onwards and its last rows/columns repeated to keep the image's size.
                shifted = F.pad(images, (dx, 0, dy, 0), mode="replicate")[..., :height, :width]
                maps = resize_heatmap(self.heatmaps(shifted, phrases), (height, width))
                total = total + F.pad(maps[..., dy:, dx:], (0, dx, 0, dy), mode="replicate")
                copies += 1
        return total / copies

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training losses for one batch; the ``"total"`` entry is optimised, the others are logged."""
        raise NotImplementedError

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; by default one group at ``lr``."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def encode_image(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"method {self.name!r} has no joint image-text space")

    def encode_text(self, texts: list[str]) -> Tensor:
        raise NotImplementedError(f"method {self.name!r} has no joint image-text space")

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        raise NotImplementedError(f"method {self.name!r} has no joint image-text space")


def check_choice(config: Any, key: str, allowed: tuple[str, ...] | list[str], section: str = "method.params") -> None:
    """One-line error when ``<section>.<key>`` is not among ``allowed`` (the settings with a fixed set of values)."""
    value = getattr(config, key)
    if value not in allowed:
        raise ConfigError(f"{section}.{key} must be one of {', '.join(allowed)}, got {value!r}")


def create_method(
    name: str, backbone_config: BackboneConfig, class_names: list[str], params: dict[str, Any] | None = None
) -> Grounder:
    """Build a registered method; ``params`` are checked against the method's typed config."""
    cls = METHODS.get(name)
    config = from_dict(cls.config_class, params or {}, f"method.params ({name})")
    return cls(config, backbone_config, class_names)
