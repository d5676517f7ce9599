"""Cross-modal retrieval: ranks of the first positive, Recall@K and median rank, computed in row chunks.

Conventions (as in VSE++, Faghri et al., BMVC 2018, and SCAN, Lee et al., ECCV 2018): for each query the
gallery is ranked by score, descending, and only the best-ranked positive counts. Here:

* ``rank`` is 0-based: the number of *negatives* whose score is ``>=`` the best positive's score. Ties with
  negatives are broken pessimistically (the positive goes after every negative it ties with), so constant
  scores never look good; other positives never push the best positive down (two positives tied at the top
  give rank 0). This is the position of the first positive in a sort by score, descending, in which ties put
  negatives before positives.
* ``R@K`` is the fraction (in [0, 1], not percent) of queries with ``rank < K``.
* ``median_rank`` is 1-based, ``floor(median(rank)) + 1`` as in the VSE++/SCAN evaluation code.

No argsort is ever taken: each chunk of rows is compared against its best positive's score, so memory is
``O(chunk_size * N_gallery)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["retrieval_ranks", "recall_at_k", "retrieval_report", "retrieval_report_from_scores"]


def _chunk_ranks(scores: Tensor, positive: Tensor) -> Tensor:
    """Ranks for one chunk: ``scores [c, N]`` and a ``positive [c, N]`` bool mask with >= 1 positive per row."""
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    if not bool(positive.any(1).all()):
        raise ValueError("every query needs at least one positive")
    best = scores.masked_fill(~positive, float("-inf")).amax(1)
    return ((scores >= best[:, None]) & ~positive).sum(1)


def _ranks_in_chunks(
    n_queries: int, chunk_size: int, scores_fn: Callable[[slice], Tensor], positive_fn: Callable[[slice], Tensor],
) -> Tensor:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    parts = []
    for start in range(0, n_queries, int(chunk_size)):
        rows = slice(start, min(start + int(chunk_size), n_queries))
        parts.append(_chunk_ranks(scores_fn(rows), positive_fn(rows)).cpu())
    return torch.cat(parts).long() if parts else torch.zeros(0, dtype=torch.long)


def retrieval_ranks(
    scores: Tensor, positives: Sequence[int | Iterable[int]] | Tensor, chunk_size: int = 1024,
) -> Tensor:
    """0-based rank of the best-ranked positive of every query, computed ``chunk_size`` rows at a time.

    For query ``q`` with positives ``P_q`` and scores ``s_q``::

        rank_q = #{ j not in P_q : s_qj >= max_{p in P_q} s_qp }

    (pessimistic on ties with negatives: a negative that ties the best positive counts as ranked above it).

    Args:
        scores: ``[Nq, Ng]`` query-gallery scores, higher is better (NaN not allowed).
        positives: a ``[Nq]`` integer tensor (one positive gallery index per query), or ``Nq`` entries each an
            int or a non-empty collection of gallery indices.
        chunk_size: rows processed at once.

    Returns:
        ``[Nq]`` int64 ranks on the CPU, in ``[0, Ng - |P_q|]``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [Nq, Ng], got {tuple(scores.shape)}")
    n_q, n_g = scores.shape
    if isinstance(positives, Tensor):
        pos_idx = positives.detach().reshape(-1).long().to(scores.device)
        if pos_idx.numel() != n_q:
            raise ValueError(f"positives has {pos_idx.numel()} entries for {n_q} queries")
        if n_q and (int(pos_idx.min()) < 0 or int(pos_idx.max()) >= n_g):
            raise ValueError(f"positive indices must lie in [0, {n_g})")

        def positive_fn(rows: slice) -> Tensor:
            mask = torch.zeros(rows.stop - rows.start, n_g, dtype=torch.bool, device=scores.device)
            return mask.scatter_(1, pos_idx[rows, None], True)
    else:
        pos_sets = [[int(p)] if isinstance(p, numbers.Integral) else sorted({int(i) for i in p}) for p in positives]
        if len(pos_sets) != n_q:
            raise ValueError(f"positives has {len(pos_sets)} entries for {n_q} queries")
        if any(i < 0 or i >= n_g for p in pos_sets for i in p):
            raise ValueError(f"positive indices must lie in [0, {n_g})")

        def positive_fn(rows: slice) -> Tensor:
            mask = torch.zeros(rows.stop - rows.start, n_g, dtype=torch.bool)
            r = [k for k, p in enumerate(pos_sets[rows]) for _ in p]
            c = [i for p in pos_sets[rows] for i in p]
            mask[r, c] = True
            return mask.to(scores.device)

    return _ranks_in_chunks(n_q, chunk_size, lambda rows: scores[rows].detach(), positive_fn)


def recall_at_k(ranks: Tensor | Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K and median rank from 0-based ranks.

    ``R@K = mean_q 1{rank_q < K}`` (a fraction in [0, 1]); ``median_rank = floor(median(rank)) + 1``
    (1-based, the VSE++/SCAN convention; for an even count the median is the mean of the two middle ranks).

    Args:
        ranks: ``[N]`` 0-based ranks, e.g. from :func:`retrieval_ranks`.
        ks: positive cut-offs.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ...}`` (one ``R@K`` per ``ks`` entry, in order);
        all ``nan`` for zero queries.
    """
    r = np.asarray(ranks.detach().cpu() if isinstance(ranks, Tensor) else ranks, dtype=np.float64).reshape(-1)
    if any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if (r < 0).any():
        raise ValueError("ranks must be >= 0 (0-based)")
    out = {f"R@{int(k)}": float((r < k).mean()) if r.size else float("nan") for k in ks}
    out["median_rank"] = float(np.floor(np.median(r)) + 1) if r.size else float("nan")
    return out


def retrieval_report(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, chunk_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """Image-text retrieval in both directions (Recall@1/5/10 and median rank).

    The score of (image ``i``, text ``t``) is the dot product ``<image_emb_i, text_emb_t>`` (normalise the
    embeddings first for cosine similarity), computed ``chunk_size`` query rows at a time, never as the full
    matrix.

    * text -> image: each caption's single positive is ``text_to_image[t]``.
    * image -> text: an image's positives are all its captions (``{t : text_to_image[t] == i}``), and the rank
      is that of its best-ranked caption; images with no caption are left out (counted by ``n_queries``).

    Ranks follow :func:`retrieval_ranks` (pessimistic ties) and metrics :func:`recall_at_k`.

    Args:
        image_emb: ``[Ni, D]`` image embeddings.
        text_emb: ``[Nt, D]`` text embeddings (same device).
        text_to_image: ``[Nt]`` integer index of each caption's image, in ``[0, Ni)``.
        chunk_size: query rows per chunk.

    Returns:
        ``{"text_to_image": {R@1, R@5, R@10, median_rank, n_queries}, "image_to_text": {...}}``.
    """
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb [Ni, D] and text_emb [Nt, D] disagree: {tuple(image_emb.shape)} vs "
                         f"{tuple(text_emb.shape)}")
    n_i, n_t = image_emb.shape[0], text_emb.shape[0]
    t2i = text_to_image.detach().reshape(-1).long().to(image_emb.device)
    if t2i.numel() != n_t:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {n_t} texts")
    if n_t and (int(t2i.min()) < 0 or int(t2i.max()) >= n_i):
        raise ValueError(f"text_to_image entries must lie in [0, {n_i})")
    dtype = torch.promote_types(image_emb.dtype, text_emb.dtype)
    img = image_emb.detach().to(dtype)
    txt = text_emb.detach().to(device=img.device, dtype=dtype)

    return _both_directions(n_i, t2i, lambda rows: txt[rows] @ img.T, lambda rows: img[rows] @ txt.T, chunk_size)


def retrieval_report_from_scores(
    scores: Tensor, text_to_image: Tensor, chunk_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """:func:`retrieval_report` from a precomputed ``[Ni, Nt]`` image x text score matrix (a method's trained
    score, which is not a dot product of embeddings): the same ranks, ties and metrics, read from its columns
    (text -> image) and rows (image -> text).

    Args:
        scores: ``[Ni, Nt]``, higher is better (NaN not allowed).
        text_to_image: ``[Nt]`` integer index of each caption's image, in ``[0, Ni)``.
        chunk_size: query rows per chunk.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [Ni, Nt], got {tuple(scores.shape)}")
    n_i, n_t = scores.shape
    t2i = text_to_image.detach().reshape(-1).long().to(scores.device)
    if t2i.numel() != n_t:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {n_t} texts")
    if n_t and (int(t2i.min()) < 0 or int(t2i.max()) >= n_i):
        raise ValueError(f"text_to_image entries must lie in [0, {n_i})")
    s = scores.detach()
    return _both_directions(n_i, t2i, lambda rows: s[:, rows].T, lambda rows: s[rows], chunk_size)


def _both_directions(n_i: int, t2i: Tensor, text_rows: Callable[[Tensor | slice], Tensor],
                     image_rows: Callable[[Tensor], Tensor], chunk_size: int) -> dict[str, dict[str, float]]:
    """Both directions of :func:`retrieval_report`: ``text_rows(rows)`` gives those captions' scores against every
    image, ``image_rows(indices)`` those images' scores against every caption."""
    device = t2i.device
    t2i_ranks = _ranks_in_chunks(
        t2i.numel(), chunk_size, text_rows,
        lambda rows: torch.arange(n_i, device=device)[None, :] == t2i[rows, None],
    )
    with_caption = torch.unique(t2i)  # sorted image indices that have >= 1 caption
    i2t_ranks = _ranks_in_chunks(
        with_caption.numel(), chunk_size,
        lambda rows: image_rows(with_caption[rows]),
        lambda rows: t2i[None, :] == with_caption[rows, None],
    )
    return {
        "text_to_image": {**recall_at_k(t2i_ranks), "n_queries": int(t2i.numel())},
        "image_to_text": {**recall_at_k(i2t_ranks), "n_queries": int(with_caption.numel())},
    }
