"""The seeds' losses, each a pure function with its formula in the docstring."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def pair_loss(features: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Seed 000's pair loss L_p (Eq. 2) over every pair i < j of attended features in a batch.

    Features are L2-normalised first, so the distance ``d_ij = ||f'_i - f'_j||`` lies in [0, 2]. Then

        same label:       max(0, d_ij - m)^2    (pull a class together, down to the margin m)
        different labels: -d_ij^2               (push classes apart)

    averaged over all pairs. The paper writes ``||f'_i - f'_j - m||^2`` for the first case and the unbounded
    ``-||f'_i - f'_j||^2`` for the second; the normalisation bounds the second term below by -4 so it cannot
    diverge, and the hinge reads the margin as a distance, which is how the text describes m.

    Args:
        features: ``[N, D]`` attended, pooled features f'.
        labels: ``[N]`` the class each feature was queried with.
        margin: m, the intra-class distance below which same-class pairs cost nothing.

    Returns:
        A scalar; 0 when N < 2.
    """
    n = features.shape[0]
    if n < 2:
        return features.sum() * 0.0
    f = F.normalize(features.float(), dim=-1)
    dist_sq = (f[:, None, :] - f[None, :, :]).pow(2).sum(-1)
    dist = torch.sqrt(dist_sq + 1e-12)
    same = labels[:, None] == labels[None, :]
    pair_cost = torch.where(same, F.relu(dist - margin).pow(2), -dist_sq)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=features.device), diagonal=1)
    return pair_cost[upper].mean()


def attention_sparsity(attention: Tensor) -> Tensor:
    """Seed 000's regulariser R (Eq. 3): the mean squared attention, ``R = 1/n^2 sum_{x,y} r(x, y)^2``,
    averaged over all maps.

    Args:
        attention: ``[..., h, w]`` attention maps r.
    """
    return attention.float().pow(2).mean()
