"""Presence calibration: a method's raw image-phrase evidence -> the probability that the phrase is in the image.

Platt scaling (Platt, "Probabilistic outputs for support vector machines", 1999): a one-feature logistic
regression ``P(present | s) = sigmoid(scale * s + bias)`` fitted on validation phrases known to be present
(their image's own) and absent (other images' phrases, checked not to match). It keeps the method's ranking
(AUROC is unchanged) and puts the decision at a stated probability: below ``threshold`` the answer is "not found".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PresenceCalibration", "fit_platt"]


@dataclass(frozen=True)
class PresenceCalibration:
    """``probability(s) = sigmoid(scale * s + bias)``; a phrase is found when it is ``>= threshold``."""

    scale: float
    bias: float
    threshold: float = 0.5

    def probability(self, raw: float) -> float:
        z = self.scale * float(raw) + self.bias
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_list(self) -> list[float]:
        return [self.scale, self.bias, self.threshold]

    @classmethod
    def from_list(cls, values: list[float]) -> "PresenceCalibration | None":
        """``[scale, bias]`` or ``[scale, bias, threshold]`` (a config's ``eval.presence_calibration``); an
        empty list is an uncalibrated method (None)."""
        if not values:
            return None
        if len(values) not in (2, 3) or not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f"presence calibration must be [scale, bias] or [scale, bias, threshold], got {values}")
        return cls(*map(float, values))


def fit_platt(present: np.ndarray, absent: np.ndarray, l2: float = 1e-4, iterations: int = 100) -> PresenceCalibration:
    """Fit ``scale`` and ``bias`` by Newton's method on the (L2-damped) logistic log-likelihood.

    The scores are standardised first, so the damping does not depend on their scale; classes are weighted to
    equal total weight, so the 0.5 threshold sits where present and absent are balanced, whatever their counts.

    Raises:
        ValueError: either set empty, or a non-finite score.
    """
    present, absent = np.asarray(present, float).ravel(), np.asarray(absent, float).ravel()
    if present.size == 0 or absent.size == 0:
        raise ValueError("presence calibration needs present and absent scores")
    scores = np.concatenate([present, absent])
    if not np.isfinite(scores).all():
        raise ValueError("presence scores must be finite")
    mean, std = scores.mean(), scores.std() or 1.0
    x = (scores - mean) / std
    y = np.concatenate([np.ones(present.size), np.zeros(absent.size)])
    w = np.where(y == 1, 0.5 / present.size, 0.5 / absent.size)
    a, b = 0.0, 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        g = np.array([np.sum(w * (p - y) * x) + l2 * a, np.sum(w * (p - y))])
        h_diag = w * p * (1 - p)
        hess = np.array([[np.sum(h_diag * x * x) + l2, np.sum(h_diag * x)], [np.sum(h_diag * x), np.sum(h_diag) + 1e-12]])
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return PresenceCalibration(scale=float(a / std), bias=float(b - a * mean / std))
