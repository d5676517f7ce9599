"""The seeds' losses, each a pure function with its formula in the docstring."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def pair_loss(features: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Fang et al.'s pair loss L_p (Eq. 2) over every pair i < j of attended features in a batch.

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
    """Fang et al.'s regulariser R (Eq. 3): the mean squared attention, ``R = 1/n^2 sum_{x,y} r(x, y)^2``,
    averaged over all maps.

    Args:
        attention: ``[..., h, w]`` attention maps r.
    """
    return attention.float().pow(2).mean()


RANKING_NEGATIVES = ("random", "hardest", "all")


def triplet_ranking_loss(scores: Tensor, margin: float, negatives: str = "hardest",
                         generator: torch.Generator | None = None) -> Tensor:
    """Bidirectional hinge (triplet) ranking loss over a batch's image-caption score matrix.

    ``scores[i, j] = S(image_i, caption_j)``; caption i describes image i, so the positives are the diagonal and
    every other entry of row i (column i) is a negative caption (image) for image i (caption i). With the hinge
    ``[x]_+ = max(0, x)`` and margin m, anchor i costs

        image -> caption:  [m - S_ii + S_ij]_+      for its negative caption(s) j != i
        caption -> image:  [m - S_ii + S_ji]_+      for its negative image(s) j != i

    and ``L = 1/B sum_i (cost_i2t(i) + cost_t2i(i))``. The negatives per anchor and direction (the matchmap paper leaves
    the "sampling strategy" open):

    * ``"random"``: one j drawn uniformly from the other B-1 items, per anchor and direction (the random
      impostors of Harwath et al., ECCV 2018, which the matchmap paper builds on).
    * ``"hardest"``: ``j = argmax_{j != i} S_ij`` (max of hinges, VSE++, Faghri et al. 2018; Engilberge et al.'s choice).
    * ``"all"``: the sum of the hinges over every j != i (VSE, Kiros et al. 2014).

    Args:
        scores: ``[B, B]`` scores, positives on the diagonal.
        margin: m.
        negatives: one of :data:`RANKING_NEGATIVES`.
        generator: random source for ``"random"`` (the global one when None).

    Returns:
        A scalar; 0 (with a gradient path) when B < 2.
    """
    if negatives not in RANKING_NEGATIVES:
        raise ValueError(f"negatives must be one of {RANKING_NEGATIVES}, got {negatives!r}")
    b = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != b:
        raise ValueError(f"scores must be a square [B, B] matrix, got {tuple(scores.shape)}")
    if b < 2:
        return scores.sum() * 0.0
    s = scores.float()
    positive = s.diagonal()
    cost_i2t = F.relu(margin - positive[:, None] + s)  # [i, j]: anchor image i, negative caption j
    cost_t2i = F.relu(margin - positive[:, None] + s.T)  # [i, j]: anchor caption i, negative image j
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=s.device)
    if negatives == "all":
        return ((cost_i2t * off_diagonal).sum(1) + (cost_t2i * off_diagonal).sum(1)).mean()
    if negatives == "hardest":
        # The hinge is monotone in S_ij, so the largest hinge is the hardest negative's.
        return (cost_i2t.masked_fill(~off_diagonal, 0).amax(1) + cost_t2i.masked_fill(~off_diagonal, 0).amax(1)).mean()
    # Adding an offset in [1, B-1] modulo B draws j != i uniformly.
    rows = torch.arange(b, device=s.device)
    offsets = torch.randint(1, b, (2, b), generator=generator).to(s.device)
    return (cost_i2t[rows, (rows + offsets[0]) % b] + cost_t2i[rows, (rows + offsets[1]) % b]).mean()


def hard_negative_triplet_loss(images: Tensor, texts: Tensor, margin: float = 0.2, hardest: bool = True) -> Tensor:
    """Engilberge et al.'s bidirectional triplet loss on in-batch negatives (Engilberge et al., CVPR 2018, Sec. 3.2;
    the hardest-negative form of VSE++, Faghri et al. 2018).

    With ``s(n, m) = <x_n, v_m>`` the score of image n and caption m (pair n matches) and the hinge
    ``l(a, b) = max(0, margin - a + b)``,

        L = 1/B sum_n [ max_{m != n} l(s(n, n), s(n, m))      image anchor, its hardest wrong caption
                      + max_{m != n} l(s(n, n), s(m, n)) ]    caption anchor, its hardest wrong image

    ``hardest=False`` sums the hinge over every negative instead of taking the max (the plain triplet loss, the
    paper's ablation baseline).

    Args:
        images: ``[B, D]`` image embeddings x (L2-normalised by the caller, so scores are cosines).
        texts: ``[B, D]`` caption embeddings v; row n describes image n.
        margin: alpha, 0.2 in the paper.
        hardest: max (True) or sum (False) over negatives.

    Returns:
        A scalar; 0 when B < 2 (no negative).
    """
    return triplet_ranking_loss(images.float() @ texts.float().T, margin, "hardest" if hardest else "all")


def log_sum_exp_pool(scores: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Akbari et al.'s word pooling (Akbari et al., CVPR 2019, Eq. 5): a soft maximum over the valid entries of the
    last axis,

        R = 1/gamma * log sum_{t: mask_t} exp(gamma * R_t)

    which tends to ``max_t R_t`` as gamma grows and to ``1/gamma log T + mean`` as it shrinks (gamma_1 = 5 in
    the paper). Computed with ``torch.logsumexp``, so large gamma does not overflow.

    Args:
        scores: ``[..., T]`` per-word scores R_t.
        mask: ``[..., T]`` bool (or 0/1), True at real words; every row needs at least one.
        gamma: gamma_1 > 0.

    Returns:
        ``[...]`` pooled scores.
    """
    masked = scores.float().masked_fill(~mask.bool(), float("-inf"))
    return torch.logsumexp(gamma * masked, dim=-1) / gamma


def batch_softmax_loss(scores: Tensor, gamma: float) -> Tensor:
    """Akbari et al.'s multimodal loss for one score kind (Akbari et al., Eqs. 7-9), over a batch of B matching
    image-caption pairs ``(I_b, S_b)``, with ``R[i, j]`` the score of image i and caption j:

        P(S_b | I_b) = exp(gamma R[b, b]) / sum_j exp(gamma R[b, j])     captions compete for an image
        P(I_b | S_b) = exp(gamma R[b, b]) / sum_i exp(gamma R[i, b])     images compete for a caption
        L = -1/B sum_b [ log P(S_b | I_b) + log P(I_b | S_b) ]

    The paper sums over the batch; the mean used here only rescales the gradient by 1/B (so the learning rate
    does not depend on the batch size). gamma_2 = 10 in the paper.

    Args:
        scores: ``[B, B]`` R (rows: images, columns: captions; row b matches column b).
        gamma: gamma_2 > 0.

    Returns:
        A scalar.
    """
    logits = gamma * scores.float()
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
