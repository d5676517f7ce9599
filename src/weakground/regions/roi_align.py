"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017) on ``torch.nn.functional.grid_sample``.

torchvision does not import in this environment, so this re-implements ``torchvision.ops.roi_align`` with the
same numbers: for a box ``[x1, y1, x2, y2]`` in image pixels (xyxy pixel edges, as everywhere in weakground),

* the box is scaled to the feature map (``x * w / W``, ``y * h / H``) and, when ``aligned``, shifted by half a
  cell so that a map cell's centre sits at ``index + 0.5`` in box coordinates (the same half-pixel convention
  as the boxes' pixel edges);
* it is split into ``output_size x output_size`` bins, each sampled on a regular ``sampling_ratio x
  sampling_ratio`` grid of bilinear samples that are averaged.

Samples outside the map behave as in torchvision: a sample up to one cell beyond the border reads the border
value (coordinates clamped), a sample farther out reads **zero**. ``grid_sample(padding_mode="border")`` does the
clamping and a mask does the zeroing, so boxes that overhang the image by a little still pool the border.

Unlike torchvision, ``sampling_ratio`` must be positive: the adaptive grid (``sampling_ratio <= 0``,
``ceil(roi_size / output_size)`` samples, different for every box) would need one ``grid_sample`` call per box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from weakground.errors import InputError

__all__ = ["boxes_as_list", "roi_align", "roi_align_mean"]


def boxes_as_list(boxes: Tensor | Sequence[Tensor], batch: int) -> list[Tensor]:
    """Per-image box tensors ``[K_b, 4]`` from either a ``[B, K, 4]`` tensor or a list of ``B`` ``[K_b, 4]``.

    Raises:
        InputError: the boxes do not have one of those shapes, or their count does not match ``batch``.
    """
    if isinstance(boxes, Tensor):
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise InputError(f"boxes must be [B, K, 4] (xyxy) or a list of [K, 4], got {tuple(boxes.shape)}")
        per_image = list(boxes.unbind(0))
    else:
        per_image = [torch.as_tensor(b) for b in boxes]
        for b in per_image:
            if b.ndim != 2 or b.shape[-1] != 4:
                raise InputError(f"each image's boxes must be [K, 4] (xyxy), got {tuple(b.shape)}")
    if len(per_image) != batch:
        raise InputError(f"boxes are given for {len(per_image)} images but the feature batch holds {batch}")
    return per_image


def _sample_coords(starts: Tensor, sizes: Tensor, points: int) -> Tensor:
    """``[K, points]`` sample positions: bin ``i`` of ``output_size``, sample ``j`` of ``sampling_ratio`` sits at
    ``start + (i * ratio + j + 0.5) * size / (output_size * ratio)``, i.e. evenly spaced centres of
    ``points`` equal sub-bins."""
    steps = torch.arange(points, dtype=starts.dtype, device=starts.device) + 0.5
    return starts[:, None] + steps[None, :] * (sizes[:, None] / points)


def _normalise(coords: Tensor, size: int) -> Tensor:
    """Map cell indices (centre of cell ``i`` at ``i``) to grid_sample's ``[-1, 1]`` with align_corners=True."""
    if size == 1:
        return torch.zeros_like(coords)  # every position reads the single cell (then masked)
    return coords * (2.0 / (size - 1)) - 1.0


def _align_one(features: Tensor, boxes: Tensor, scale: tuple[float, float], output_size: int,
               sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of ``[K, 4]`` boxes on one ``[C, h, w]`` map -> ``[K, C, output_size, output_size]``."""
    c, h, w = features.shape
    k = boxes.shape[0]
    boxes = boxes.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1 = boxes[:, 0] * scale[1] - offset, boxes[:, 1] * scale[0] - offset
    roi_w, roi_h = boxes[:, 2] * scale[1] - offset - x1, boxes[:, 3] * scale[0] - offset - y1
    if not aligned:  # torchvision's legacy behaviour: boxes are at least one cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    points = output_size * sampling_ratio
    xs, ys = _sample_coords(x1, roi_w, points), _sample_coords(y1, roi_h, points)  # [K, P] each
    grid = torch.stack(torch.broadcast_tensors(_normalise(xs, w)[:, None, :], _normalise(ys, h)[:, :, None]), -1)
    sampled = F.grid_sample(features[None], grid.reshape(1, k * points, points, 2), mode="bilinear",
                            padding_mode="border", align_corners=True).reshape(c, k, points, points)
    # torchvision reads zero for a sample more than one cell outside the map (clamped grid_sample reads the border).
    inside_x = ((xs >= -1.0) & (xs <= w)).to(sampled.dtype)
    inside_y = ((ys >= -1.0) & (ys <= h)).to(sampled.dtype)
    sampled = sampled * (inside_y[:, :, None] * inside_x[:, None, :])
    # Mean of each bin's ratio x ratio samples, then boxes first; pooling before the transpose copies less.
    r = sampling_ratio
    binned = sampled.reshape(c, k, output_size, r, output_size, r).mean(dim=(3, 5))
    return binned.transpose(0, 1).contiguous()


def roi_align(features: Tensor, boxes: Tensor | Sequence[Tensor], image_size: tuple[int, int],
              output_size: int = 7, sampling_ratio: int = 2, aligned: bool = True) -> Tensor:
    """Pool a fixed-size feature grid from each box, as ``torchvision.ops.roi_align`` does.

    Args:
        features: ``[B, C, h, w]`` feature maps of images of ``image_size``.
        boxes: ``[B, K, 4]`` or a list of ``B`` tensors ``[K_b, 4]``: xyxy boxes in image pixels (pixel edges).
        image_size: ``(H, W)`` of the images; the spatial scales are ``h / H`` and ``w / W``.
        output_size: bins per side.
        sampling_ratio: bilinear samples per bin side (> 0), averaged in each bin.
        aligned: shift by half a cell (torchvision's ``aligned=True``, the correct pixel model); ``False`` is
            the legacy Mask R-CNN variant (no shift, boxes of at least one cell).

    Returns:
        ``[sum_b K_b, C, output_size, output_size]`` (``[B * K, ...]`` for a tensor of boxes), image-major: the
        boxes of image 0 first. Differentiable in ``features``.

    Raises:
        InputError: malformed ``features`` or ``boxes``.
        ValueError: ``output_size``, ``sampling_ratio`` or ``image_size`` not positive.
    """
    if features.ndim != 4:
        raise InputError(f"features must be [B, C, h, w], got {tuple(features.shape)}")
    if output_size < 1 or sampling_ratio < 1:
        raise ValueError(f"output_size and sampling_ratio must be >= 1, got {output_size}, {sampling_ratio}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    per_image = boxes_as_list(boxes, features.shape[0])
    c, h, w = features.shape[1:]
    scale = (h / float(image_size[0]), w / float(image_size[1]))
    outs = [_align_one(features[i], bx.to(features.device), scale, output_size, sampling_ratio, aligned)
            for i, bx in enumerate(per_image) if bx.shape[0] > 0]
    if not outs:
        return features.new_zeros(0, c, output_size, output_size)
    return torch.cat(outs, 0)


def roi_align_mean(features: Tensor, boxes: Tensor | Sequence[Tensor], image_size: tuple[int, int],
                   output_size: int = 7, sampling_ratio: int = 2, aligned: bool = True) -> Tensor:
    """``roi_align(...).mean(dim=(2, 3))``, computed as one weighted sum over the map's cells per box.

    RoIAlign is linear in the map, so the mean over a box's bins is ``sum_cells weight(cell) * map(cell)``.
    The weights come from RoIAlign on a one-hot map of ``h * w`` channels (cheap: ``h * w`` is 49 at stride 32
    on 224 px), then one ``[K, h*w] x [h*w, C]`` product per image: ~10x faster than pooling the 1280 head
    channels bin by bin, with the same numbers up to float rounding.

    Args:
        features, boxes, image_size, output_size, sampling_ratio, aligned: as :func:`roi_align`.

    Returns:
        ``[sum_b K_b, C]`` (image-major), differentiable in ``features``.
    """
    if features.ndim != 4:
        raise InputError(f"features must be [B, C, h, w], got {tuple(features.shape)}")
    b, c, h, w = features.shape
    per_image = boxes_as_list(boxes, b)
    counts = [int(bx.shape[0]) for bx in per_image]
    if sum(counts) == 0:
        return features.new_zeros(0, c)
    one_hot = torch.eye(h * w, dtype=features.dtype, device=features.device).reshape(1, h * w, h, w)
    every = torch.cat([bx.to(features.device) for bx in per_image])[None]  # all boxes on the one-hot map
    weights = roi_align(one_hot, every, image_size, output_size, sampling_ratio, aligned).mean(dim=(2, 3))
    flat = features.reshape(b, c, h * w)
    parts = [wt @ flat[i].T for i, wt in enumerate(weights.split(counts)) if counts[i]]
    return torch.cat(parts, 0)
