"""A frozen region encoder: per-region features, positions and class probabilities for the grounded captioner.

Hu et al. ("Spatial-Semantic Attention for Grounded Image Captioning", ICIP 2022) read, for each of K regions,
a feature ``v_i``, a position ``p_i = [x1, x2, y1, y2, s]`` (the paper's order; coordinates divided by the image
width/height, ``s`` the box area over the image area) and class probabilities ``c_i`` from their detector. Here
``v_i`` is RoIAlign on a frozen EfficientNet-Lite0 map, averaged over the bins, and ``c_i`` is the **bundled
ImageNet-1k classifier** applied to the RoI-pooled head map: the stand-in for the detector's classes (1000
ImageNet classes, not object categories of the scenes; what they say about a region is whatever ImageNet
features say about it). Nothing here trains: the captioner trains on features precomputed once per image
(:func:`encode_dataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weakground.errors import InputError
from weakground.regions.roi_align import roi_align_mean
from weakground.regions.sources import RegionConfig, check_image

__all__ = ["RegionEncoder", "Regions", "encode_dataset", "positions_of", "resize_square", "scale_boxes"]

CLASS_LEVEL = "head"  # the map the ImageNet classifier reads


@dataclass
class Regions:
    """K regions for each of B images; rows where ``valid`` is False are padding and hold zeros everywhere.

    Attributes:
        boxes: ``[B, K, 4]`` float32 xyxy boxes in the encoder's image pixels (S x S).
        features: ``[B, K, C]``: RoIAlign on the ``level`` map, mean over the bins.
        positions: ``[B, K, 5]`` in [0, 1]: ``[x1 / W, x2 / W, y1 / H, y2 / H, box area / image area]``.
        classes: ``[B, K, 1000]``: ImageNet class probabilities of each region (rows sum to 1 where valid).
        valid: ``[B, K]`` bool.
    """

    boxes: Tensor
    features: Tensor
    positions: Tensor
    classes: Tensor
    valid: Tensor

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def __getitem__(self, index: Any) -> Regions:
        """The regions of a subset of images (an index, slice, index tensor or mask over B), batch dim kept."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Regions(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def decoder_inputs(self) -> dict[str, Tensor]:
        """What a captioner reads of its regions (``features``, ``positions``, ``classes``, ``valid``): its boxes
        stay out, so the box of a region reaches the decoder only as its normalised ``positions``."""
        return {"features": self.features, "positions": self.positions, "classes": self.classes, "valid": self.valid}

    def to(self, *args: Any, **kwargs: Any) -> Regions:
        """Every tensor moved/cast like ``Tensor.to`` (``valid`` stays bool on a dtype cast)."""
        moved = {f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self) if f.name != "valid"}
        device = moved["boxes"].device
        return Regions(valid=self.valid.to(device), **moved)

    @staticmethod
    def cat(parts: Sequence[Regions]) -> Regions:
        """Concatenate along the image dimension (all parts share K and C)."""
        return Regions(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Regions)})


def positions_of(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The paper's 5-d position ``[x1 / W, x2 / W, y1 / H, y2 / H, area / (W * H)]`` of ``[..., 4]`` xyxy boxes
    (already inside the ``(H, W)`` image) -> ``[..., 5]``."""
    h, w = float(image_size[0]), float(image_size[1])
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0) / (w * h)
    return torch.stack([x1 / w, x2 / w, y1 / h, y2 / h, area], -1)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[size, size, 3]`` (bilinear, aspect not kept: the captioner's images are squares)."""
    from PIL import Image

    return np.asarray(Image.fromarray(check_image(image)).resize((size, size), Image.Resampling.BILINEAR))


def scale_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """xyxy boxes of a ``from_size = (H, W)`` image in the pixels of the same image resized to ``to_size``."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return (np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])).astype(np.float32)


def _stack_images(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 from a list of same-size images; InputError naming the first bad one."""
    arrays = [check_image(im) for im in images]
    if not arrays:
        raise InputError("the region encoder needs at least one image")
    if any(a.shape != arrays[0].shape for a in arrays):
        sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in arrays})
        raise InputError(f"the region encoder's images must share one size (resize first), got {', '.join(sizes)}")
    return np.stack(arrays)


def _pad_boxes(boxes: Any, batch: int, limit: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """``([B, K, 4] boxes clipped to the image, [B, K] valid)`` from per-image ``[k_b, 4]`` boxes, k_b <= K."""
    if isinstance(boxes, (np.ndarray, Tensor)) and boxes.ndim != 3:
        raise InputError(f"boxes must be [B, K, 4] or B arrays [k, 4], got an array of shape {tuple(boxes.shape)}")
    per_image = list(boxes)
    if len(per_image) != batch:
        raise InputError(f"boxes are given for {len(per_image)} images but the batch holds {batch}")
    out = torch.zeros(batch, limit, 4)
    valid = torch.zeros(batch, limit, dtype=torch.bool)
    for i, b in enumerate(per_image):
        b = torch.as_tensor(np.asarray(b, dtype=np.float32))
        if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] > limit or not bool(torch.isfinite(b).all()):
            raise InputError(f"image {i}: boxes must be finite [k, 4] (xyxy) with k <= max_regions={limit}, "
                             f"got {tuple(b.shape)}")
        b = torch.stack([b[:, 0].clamp(0, width), b[:, 1].clamp(0, height),
                         b[:, 2].clamp(0, width), b[:, 3].clamp(0, height)], -1)
        out[i, : len(b)], valid[i, : len(b)] = b, True
    return out, valid


class RegionEncoder(nn.Module):
    """Frozen EfficientNet-Lite0 region encoder (no trainable parameters; runs under ``torch.no_grad``).

    Args:
        config: ``level``, ``max_regions`` (K), ``output_size`` and ``sampling_ratio`` are read.
        lite: the backbone; default the shared BatchNorm-folded copy
            (:func:`weakground.vision.efficientnet_lite.pretrained_lite`).
    """

    def __init__(self, config: RegionConfig | None = None, lite: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config or RegionConfig()
        if lite is None:
            from weakground.vision.efficientnet_lite import pretrained_lite

            lite = pretrained_lite(fused=True)
        self.lite = lite
        for p in self.lite.parameters():
            p.requires_grad_(False)
        self.lite.eval()

    @property
    def channels(self) -> int:
        """C, the feature size of a region (the ``level``'s channels)."""
        return int(self.lite.channels[self.config.level])

    def train(self, mode: bool = True) -> RegionEncoder:
        # The backbone stays in eval mode: its BatchNorm statistics are ImageNet's.
        super().train(mode)
        self.lite.eval()
        return self

    @torch.no_grad()
    def _pool(self, maps: dict[str, Tensor], boxes: list[Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(features [N, C], classes [N, 1000])`` of the N boxes, image-major."""
        cfg = self.config
        pooled = {name: roi_align_mean(m, boxes, size, cfg.output_size, cfg.sampling_ratio)
                  for name, m in maps.items()}
        # Linear after a mean, as the image classifier is after global pooling: fc(mean over the region).
        classes = torch.softmax(self.lite.classifier(pooled[CLASS_LEVEL]), dim=-1)
        return pooled[cfg.level], classes

    @torch.no_grad()
    def forward(self, images: Sequence[np.ndarray] | np.ndarray, boxes: Any) -> Regions:
        """Encode the regions of a batch.

        Args:
            images: B uint8 ``[S, S, 3]`` images of one size (``[B, S, S, 3]`` array or a list), >= 32 px.
            boxes: ``[B, K', 4]`` or B arrays ``[k_b, 4]`` of xyxy boxes in those images' pixels, ``k_b <= K``
                (``config.max_regions``); clipped to the image.

        Returns:
            :class:`Regions` with K = ``config.max_regions`` rows per image, on the backbone's device.

        Raises:
            InputError: malformed images (not uint8 RGB, under 32 px, mixed sizes) or boxes.
        """
        batch = _stack_images(images)
        b, h, w = batch.shape[:3]
        k = self.config.max_regions
        padded, valid = _pad_boxes(boxes, b, k, h, w)
        device = self.lite.classifier.weight.device
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # [0, 1]: lite normalises
        names = tuple(dict.fromkeys((self.config.level, CLASS_LEVEL)))
        maps = self.lite.levels(x, names)
        padded, valid = padded.to(device), valid.to(device)
        features, classes = self._pool(maps, [padded[i][valid[i]] for i in range(b)], (h, w))
        out_features = features.new_zeros(b, k, features.shape[-1])
        out_classes = classes.new_zeros(b, k, classes.shape[-1])
        out_features[valid], out_classes[valid] = features, classes
        positions = positions_of(padded, (h, w)) * valid[..., None]
        return Regions(padded, out_features, positions, out_classes, valid)


def encode_dataset(images: np.ndarray | Sequence[np.ndarray], boxes_per_image: Sequence[Any], batch_size: int = 32,
                   progress: bool = False, encoder: RegionEncoder | None = None,
                   store_dtype: torch.dtype = torch.float32) -> Regions:
    """Encode every image's regions once, in batches (the captioner then trains on these features).

    Args:
        images: ``[N, S, S, 3]`` uint8 (or N same-size images).
        boxes_per_image: N arrays ``[k_i, 4]`` of xyxy boxes in those images' pixels (e.g. a source's
            :meth:`~weakground.regions.sources.RegionSource.boxes` on each image).
        batch_size: images per forward pass.
        progress: show a tqdm bar (stderr).
        encoder: default ``RegionEncoder()`` (``RegionConfig()``: c5, K = 16).
        store_dtype: dtype of ``features`` and ``classes`` in the result (``torch.float16`` halves the memory
            of the 1000-d class rows: 64 KB per image at K = 16 in float32).

    Returns:
        :class:`Regions` over all N images, on the CPU.
    """
    if len(images) != len(boxes_per_image):
        raise InputError(f"{len(images)} images but {len(boxes_per_image)} box lists")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    encoder = encoder or RegionEncoder()
    parts = []
    with tqdm(total=len(images), disable=not progress, desc="encode regions", unit="image", leave=False) as bar:
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            part = encoder(images[start:stop], list(boxes_per_image[start:stop])).to("cpu")
            part.features, part.classes = part.features.to(store_dtype), part.classes.to(store_dtype)
            parts.append(part)
            bar.update(len(part))
    if not parts:
        raise InputError("encode_dataset needs at least one image")
    return Regions.cat(parts)

