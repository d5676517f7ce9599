"""Spatial pooling of feature maps into one vector per channel."""

from __future__ import annotations

from torch import Tensor


def weldon_k(fraction: float, positions: int) -> int:
    """How many positions a Weldon term averages: ``max(1, round(fraction * positions))``, at most ``positions``.

    A fraction rather than a count keeps the pooling's meaning when the map size changes with the image size
    (Engilberge et al. uses a fixed count tuned for one input size).
    """
    return min(positions, max(1, round(fraction * positions)))


def weldon_pool(maps: Tensor, k_max: int, k_min: int, min_weight: float = 1.0) -> Tensor:
    """Weldon spatial pooling (Durand et al., CVPR 2016), as used by Engilberge et al. in place of global pooling.

    For each channel c of a map ``G[c]`` with positions sorted by activation,

        s_c = (1 / k+) sum of the k+ highest G[c, i]  +  min_weight * (1 / k-) sum of the k- lowest G[c, i]

    The max term picks the regions that show the channel's concept; the min term adds negative evidence (a
    channel whose weakest regions are still active describes the whole image). ``min_weight = 1`` is Weldon;
    other values give WILDCAT's weighted variant, ``0`` plain top-k max pooling.

    Args:
        maps: ``[B, C, h, w]``.
        k_max: positions in the max term, ``1 <= k_max``; clamped to ``h * w``.
        k_min: positions in the min term, ``0 <= k_min`` (0 drops the term); clamped to ``h * w``.
        min_weight: weight of the min term.

    Returns:
        ``[B, C]``.
    """
    if k_max < 1 or k_min < 0:
        raise ValueError(f"weldon_pool needs k_max >= 1 and k_min >= 0, got {k_max}, {k_min}")
    flat = maps.flatten(2)
    positions = flat.shape[-1]
    pooled = flat.topk(min(k_max, positions), dim=-1).values.mean(-1)
    if k_min > 0 and min_weight != 0:
        lowest = flat.topk(min(k_min, positions), dim=-1, largest=False).values.mean(-1)
        pooled = pooled + min_weight * lowest
    return pooled
