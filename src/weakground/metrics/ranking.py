"""Ranking metrics on scalar scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

__all__ = ["auroc"]

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(out).any():
        raise ValueError(f"{name} contain NaN")
    return out


def auroc(positive_scores: ArrayLike, negative_scores: ArrayLike) -> float:
    """Area under the ROC curve, from the Mann-Whitney U statistic.

    With positives ``p_1..p_n`` and negatives ``q_1..q_m``::

        AUROC = (1 / (n m)) * sum_i sum_j [ 1{p_i > q_j} + 1/2 * 1{p_i = q_j} ]

    i.e. the probability that a random positive outscores a random negative, ties counting one half; this
    equals the trapezoidal area under the ROC curve (Hanley & McNeil, Radiology 1982). Computed in
    O((n + m) log m) by sorting the negatives and counting, for each positive, the negatives strictly below
    it and those equal to it.

    Args:
        positive_scores: scores of the positives, a tensor, array or sequence of any shape (flattened).
        negative_scores: scores of the negatives, likewise. ``+/-inf`` is allowed, NaN is not.

    Returns:
        AUROC in [0, 1]; ``nan`` if either side is empty.
    """
    pos = _as_1d(positive_scores, "positive_scores")
    neg = np.sort(_as_1d(negative_scores, "negative_scores"))
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")  # negatives < p
    at_or_below = np.searchsorted(neg, pos, side="right")  # negatives <= p
    twice_u = int(below.sum()) + int(at_or_below.sum())  # 2U, an exact integer
    return float(twice_u / (2.0 * pos.size * neg.size))
