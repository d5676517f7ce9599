"""The Grounder interface that every method implements (and JointSpaceGrounder, for methods with a joint
image-text space), the settings of how a method reads images, and the short factory that builds one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from weakground.config import BackboneConfig, from_dict
from weakground.errors import ConfigError, InputError
from weakground.metrics import resize_heatmap
from weakground.registry import METHODS


@dataclass(frozen=True)
class InferenceSettings:
    """How a method reads images when asked for grounding maps (not what it learned).

    Attributes:
        input_size: side of the square every image is resized to before the method sees it (None: as given).
            Caption methods train on ``data.image_size`` squares; their frozen encoders' features and the mappings
            learned on them suit that scale: on the scenes, multilevel and matchmap point better reading a 224-px
            image resized than at its own size (dsve_loc does not; ``python benchmarks/methods.py inference``).
            :meth:`Grounder.prepare_images` applies it, resizing as training did.
        shift_average: n > 1: :meth:`Grounder.grounding_maps` averages the heatmaps of n x n copies of the image,
            shifted by multiples of 1/n of the feature map's stride (test-time shift averaging). A stride-8 map's
            peak can only sit on its cell centres; the shifted copies put other pixels under the cells, so the
            average's peak can fall between them. 1: one pass.

    A trained model's come from its config (``data.image_size``, ``data.eval_resize``, ``eval.shift_average``;
    see :func:`weakground.engine.inference.inference_settings`).
    """

    input_size: int | None = None
    shift_average: int = 1

    def __post_init__(self) -> None:
        if self.shift_average < 1:
            raise ConfigError(f"eval.shift_average must be >= 1 (1: no shifted copies), got {self.shift_average}")
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError(f"the inference input size must be >= 1 px (None: images as given), got "
                              f"{self.input_size}")


class Grounder(nn.Module):
    """Base class of grounding methods.

    The evaluators only ever call :meth:`grounding_maps` (which calls :meth:`heatmaps`); the training engine only
    calls :meth:`loss` and :meth:`param_groups`. Methods with a joint image-text space derive from
    :class:`JointSpaceGrounder`, which adds :meth:`~JointSpaceGrounder.encode_image`,
    :meth:`~JointSpaceGrounder.encode_text` and :meth:`~JointSpaceGrounder.scores`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    # Evaluators read these flags instead of calling a method and catching NotImplementedError.
    # False: a fixed method (a baseline, or `bridge` on pretrained parts as they are), built without a checkpoint.
    trainable: ClassVar[bool] = True
    has_joint_space: ClassVar[bool] = False  # True exactly for JointSpaceGrounder subclasses
    # The boxes `locate` and the server draw when none are asked for: "threshold" (regions at the box threshold)
    # or "instance" (one per object, grown from each peak; weakground.metrics.instances).
    default_boxes: ClassVar[str] = "threshold"
    # The training task a method needs whatever data feeds it (None: the dataset's own task decides)
    task: ClassVar[str | None] = None
    # Attributes holding frozen pretrained modules (loaded from their packages on construction): checkpoints
    # leave them out, see weakground.engine.checkpoint.checkpointed_state.
    frozen_modules: ClassVar[tuple[str, ...]] = ()
    min_image_side: ClassVar[int] = 16

    def __init__(self, config: Any, backbone_config: BackboneConfig, class_names: list[str],
                 inference: InferenceSettings | None = None) -> None:
        """
        Args:
            config: the method's own settings, an instance of its :attr:`config_class` (``method.params``).
            backbone_config: the ResNet's settings (``backbone:``), read by methods whose image encoder is the
                ResNet (Fang et al.'s label mode; ``image_encoder: resnet`` elsewhere). Its ``in_channels`` is the
                channel count of the images every method is given (1 for multi-MNIST, 3 for RGB photos), which
                :meth:`check_images` holds them to.
            class_names: the label vocabulary of label-trained methods (multi-MNIST's digit names), whose class
                scores and queries are indexed by it; empty for caption-trained methods, which read any phrase.
            inference: how :meth:`grounding_maps` and :meth:`prepare_images` read images (default: as given, one
                pass); fixed for the model's life, and overridden per call by passing settings to those methods.
        """
        super().__init__()
        self.config = config
        self.backbone_config = backbone_config
        self.class_names = list(class_names)
        self.inference = InferenceSettings() if inference is None else inference

    @classmethod
    def concrete_class(cls, config: Any) -> type[Grounder]:
        """The class that implements ``config``: this one, unless a method declares variants chosen by a
        setting (see ``MCBAttention.variants``). :func:`create_method` builds what this returns."""
        return cls

    @property
    def input_size(self) -> int | None:
        """:attr:`InferenceSettings.input_size` of :attr:`inference` (read-only: build with other settings)."""
        return self.inference.input_size

    @property
    def shift_average(self) -> int:
        """:attr:`InferenceSettings.shift_average` of :attr:`inference` (read-only)."""
        return self.inference.shift_average

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

    def prepare_images(self, images: Tensor, inference: InferenceSettings | None = None) -> Tensor:
        """:meth:`check_images`, then the ``input_size`` square of ``inference`` (default :attr:`inference`),
        resized as training resized its images (bilinear with antialiasing, like PIL's bilinear resize); unchanged
        when no size is set or it already fits. Heatmaps come out at the square's feature grid: callers resize
        them to the image as always."""
        self.check_images(images)
        size = (self.inference if inference is None else inference).input_size
        if size is None or tuple(images.shape[-2:]) == (size, size):
            return images
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def heatmaps(self, images: Tensor, phrases: list[str], inference: InferenceSettings | None = None) -> Tensor:
        """Ground every phrase in every image.

        Args:
            images: ``[B, C, H, W]`` float images.
            phrases: P phrases (or labels), asked of every image.
            inference: how to read the images (default :attr:`inference`); a method passes it on to
                :meth:`prepare_images`. Its ``shift_average`` is :meth:`grounding_maps`'s business.

        Returns:
            ``[B, P, h, w]`` non-negative maps at the method's feature resolution; resize with
            :func:`weakground.metrics.resize_heatmap`.
        """
        raise NotImplementedError

    def grounding_maps(self, images: Tensor, phrases: list[str],
                       inference: InferenceSettings | None = None) -> Tensor:
        """What the evaluators, ``locate`` and ``serve`` ask for: :meth:`heatmaps`, or with ``shift_average``
        n > 1 their average over n x n shifted copies of the image.

        Args:
            inference: the settings for this call (default :attr:`inference`, the model's own).

        Returns:
            ``[B, P, h, w]``: the method's own grid when n is 1, else the (prepared) image's full resolution.
            Either way, resize with :func:`weakground.metrics.resize_heatmap`.
        """
        settings = self.inference if inference is None else inference
        if settings.shift_average <= 1 or not phrases:
            return self.heatmaps(images, phrases, inference=settings)
        images = self.prepare_images(images, settings)  # once: the copies are then already at input_size
        return self._shift_averaged(images, phrases, settings)

    def _shift_averaged(self, images: Tensor, phrases: list[str], settings: InferenceSettings) -> Tensor:
        """The mean of the heatmaps of ``settings.shift_average``^2 shifted copies of prepared ``images``, at
        their resolution."""
        n = settings.shift_average
        height, width = images.shape[-2:]
        first = self.heatmaps(images, phrases, inference=settings)
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
                maps = resize_heatmap(self.heatmaps(shifted, phrases, inference=settings), (height, width))
                total = total + F.pad(maps[..., dy:, dx:], (0, dx, 0, dy), mode="replicate")
                copies += 1
        return total / copies

    @torch.no_grad()
    def presence_scores(self, images: Tensor, phrases: list[str], maps: Tensor | None = None) -> Tensor:
        """``[B, P]`` raw evidence that each phrase is in each image, higher for more (the method's own scale:
        :class:`~weakground.metrics.calibration.PresenceCalibration` turns it into a probability). By default
        the peak of the phrase's map (``maps``, when the caller already has :meth:`grounding_maps`); a method
        with a better signal (its trained image-text score, its classifier's evidence) overrides this."""
        maps = self.grounding_maps(images, phrases) if maps is None else maps
        return maps.flatten(2).amax(-1)

    @torch.no_grad()
    def grounding_maps_and_presence(self, images: Tensor, phrases: list[str]) -> tuple[Tensor, Tensor]:
        """:meth:`grounding_maps` and :meth:`presence_scores` of one call (what ``locate`` asks of a calibrated
        method); a method whose two share work overrides this to do that work once (``bridge``)."""
        maps = self.grounding_maps(images, phrases)
        return maps, self.presence_scores(images, phrases, maps)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training losses for one batch; the ``"total"`` entry is optimised, the others are logged."""
        raise NotImplementedError

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; by default one group at ``lr``."""
        return [{"params": list(self.parameters()), "lr": lr}]


class JointSpaceGrounder(Grounder):
    """A grounder that also embeds images and texts in one space: retrieval (``weakground retrieve``, the recall
    block of ``eval``) reads :meth:`encode_image` and :meth:`encode_text` to index and :meth:`scores` to re-rank.
    Subclasses implement all three."""

    has_joint_space: ClassVar[bool] = True

    def encode_image(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` images -> ``[B, D]`` unit embeddings."""
        raise NotImplementedError(f"method {self.name!r} declares a joint space but does not implement encode_image")

    def encode_text(self, texts: list[str]) -> Tensor:
        """``T`` texts -> ``[T, D]`` unit embeddings."""
        raise NotImplementedError(f"method {self.name!r} declares a joint space but does not implement encode_text")

    def scores(self, images: Tensor, texts: list[str]) -> Tensor:
        """``[B, T]`` image-text scores, higher for a better match (exact, possibly costlier than the embeddings'
        dot product)."""
        raise NotImplementedError(f"method {self.name!r} declares a joint space but does not implement scores")

    @torch.no_grad()
    def presence_scores(self, images: Tensor, phrases: list[str], maps: Tensor | None = None) -> Tensor:
        """The trained image-text score (:meth:`scores`) of each phrase: what the method learned to rank a
        caption's image above others' by is its evidence that the phrase is there (``maps`` is not needed)."""
        return self.scores(images, phrases)


class Captioner(nn.Module):
    """Base class of caption writers (Hu et al.'s ``ss_attention``, its ``updown`` baseline): they write a caption
    from an image's regions and ground each object word in the region they attended. Trained by the captioning
    task (``task``) through :meth:`loss`; ``class_names`` is their caption vocabulary."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    trainable: ClassVar[bool] = True
    has_joint_space: ClassVar[bool] = False
    task: ClassVar[str | None] = "captioning"
    frozen_modules: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def concrete_class(cls, config: Any) -> type[Captioner]:
        return cls

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def generate(self, batch: dict[str, Tensor], beam: int | None = None) -> list[tuple[list[int], Tensor]]:
        """Per image, the word ids written and ``gamma [n_words, K]``, the region weights of each word."""
        raise NotImplementedError

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def grounded_objects(self, ids: list[int], gamma: Tensor, boxes: Tensor) -> list[dict[str, Any]]:
        """Each object word among the written ``ids`` (``config.object_words``) with its class and the box of the
        region of largest gamma at the step that wrote it (``boxes [K, 4]``, the regions' frame)."""
        words, classes = self.class_names, self.config.object_words
        return [{"word": words[w], "class": classes[words[w]], "box": [float(v) for v in boxes[int(gamma[t].argmax())]]}
                for t, w in enumerate(ids) if words[w] in classes]


def check_choice(config: Any, key: str, allowed: tuple[str, ...] | list[str], section: str = "method.params") -> None:
    """One-line error when ``<section>.<key>`` is not among ``allowed`` (the settings with a fixed set of values)."""
    value = getattr(config, key)
    if value not in allowed:
        raise ConfigError(f"{section}.{key} must be one of {', '.join(allowed)}, got {value!r}")


def create_method(
    name: str, backbone_config: BackboneConfig, class_names: list[str], params: dict[str, Any] | None = None,
    inference: InferenceSettings | None = None,
) -> Grounder | Captioner:
    """Build a registered method; ``params`` are checked against the method's typed config, which may select a
    variant class (:meth:`Grounder.concrete_class`). ``inference``: how it reads images (default: as given)."""
    cls = METHODS.get(name)
    config = from_dict(cls.config_class, params or {}, f"method.params ({name})")
    return cls.concrete_class(config)(config, backbone_config, class_names, inference=inference)
