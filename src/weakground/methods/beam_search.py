"""Beam search for the captioners: every image's beams advance together, one decoder step per word."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

EOS, PAD = 2, 0


def _expand(regions: dict[str, Tensor], beam: int) -> dict[str, Tensor]:
    """Each image's region tensors repeated ``beam`` times along the batch: ``[B, ...] -> [B * beam, ...]``."""
    return {k: v.repeat_interleave(beam, 0) for k, v in regions.items()}


def beam_search(model: Any, regions: dict[str, Tensor], beam: int, max_len: int) -> list[tuple[list[int], Tensor]]:
    """The highest-scoring caption per image (sum of word log-probabilities, ``<eos>`` included).

    Args:
        model: a captioner with ``step(words, state, regions)`` and ``initial_state(n, like)``.
        regions: the encoded regions of B images (``model.encode_regions``).
        beam: beams per image (1: greedy decoding).
        max_len: words at most, ``<eos>`` aside.

    Returns:
        Per image ``(word ids, gamma)``: ids without ``<bos>``/``<eos>``, and ``gamma [len(ids), K]``, the region
        weights each word was written with.
    """
    b, k = regions["valid"].shape
    regions = _expand(regions, beam)
    state = model.initial_state(b * beam, regions["mean"])
    words = torch.ones(b * beam, dtype=torch.long, device=regions["mean"].device)  # <bos>
    scores = torch.full((b, beam), float("-inf"), device=words.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not pick a word k times
    history = words.new_zeros(b, beam, 0)
    gammas = regions["mean"].new_zeros(b, beam, 0, k)
    done = torch.zeros(b, beam, dtype=torch.bool, device=words.device)
    for step in range(max_len + 1):
        logits, gamma, state = model.step(words, state, regions)
        logp = torch.log_softmax(logits.float(), -1).view(b, beam, -1)
        # a finished beam only extends with padding, at no cost, so it keeps its score and its place
        logp = torch.where(done[..., None], torch.full_like(logp, float("-inf")), logp)
        logp[..., PAD] = torch.where(done, 0.0, float("-inf"))
        logp[..., 1] = float("-inf")  # <bos> is never written
        if step == max_len:  # max_len words written: only <eos> (or a finished beam's padding) may follow
            logp[..., 3:] = float("-inf")
        n_words = logp.shape[-1]
        best, index = (scores[..., None] + logp).view(b, -1).topk(beam, dim=-1)
        origin, words2d = index // n_words, index % n_words
        pick = (torch.arange(b, device=words.device)[:, None] * beam + origin).flatten()
        state = tuple(s[pick] for s in state)
        history = torch.cat([history.gather(1, origin[..., None].expand(-1, -1, history.shape[2])),
                             words2d[..., None]], 2)
        gammas = torch.cat([gammas.gather(1, origin[..., None, None].expand(-1, -1, *gammas.shape[2:])),
                            gamma.view(b, beam, 1, k)[torch.arange(b, device=words.device)[:, None], origin]], 2)
        done = done.gather(1, origin) | (words2d == EOS) | (words2d == PAD)
        scores, words = best, words2d.flatten()
        if done.all():
            break
    return [_finished(history[i, 0], gammas[i, 0]) for i in range(b)]


def _finished(ids: Tensor, gamma: Tensor) -> tuple[list[int], Tensor]:
    """Cut a beam at its ``<eos>`` (or first padding)."""
    out = []
    for i in ids.tolist():
        if i in (EOS, PAD):
            break
        out.append(i)
    return out, gamma[: len(out)]
