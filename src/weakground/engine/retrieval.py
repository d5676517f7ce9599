"""Cross-modal retrieval with a trained joint-space method: index a gallery of images, search it by text, and rank
captions for an image.

Two stages. (1) Every gallery image is embedded once with ``encode_image`` (``[D]``), and a text query with
``encode_text``; their dot product ranks the whole gallery — exactly with one matrix product for small galleries,
through a FAISS HNSW index (``faiss-cpu``) for large ones, where building the graph is cheaper than scanning
millions of rows per query. (2) For methods whose true image-text score is not that dot product (word-level
matching, query-dependent attention), the top ``rerank`` candidates are re-scored with the method's exact
``scores`` and re-sorted. A gallery can be saved (safetensors: embeddings + image paths + the checkpoint it was
built with) and searched again without re-embedding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from weakground.errors import WeakgroundError

FAISS_MIN_GALLERY = 20_000  # below this an exact matrix product is faster than building an HNSW graph
HNSW_NEIGHBOURS = 32


@dataclass
class Gallery:
    """Embedded images.

    Attributes:
        paths: the image files, in row order.
        embeddings: ``[N, D]`` float32 ``encode_image`` outputs.
        method: the method that embedded them.
        checkpoint: the checkpoint file it was loaded from.
    """

    paths: list[str]
    embeddings: Tensor
    method: str
    checkpoint: str


def _load_tensor(path: Path, channels: int) -> Tensor:
    from weakground.io import image_to_tensor, read_image

    return image_to_tensor(read_image(path, channels=channels))


def build_gallery(model: Any, paths: Sequence[Path], checkpoint: str, progress: bool = False
                  ) -> tuple[Gallery, list[str]]:
    """Embed every readable image; returns the gallery and one ``"path: reason"`` line per skipped file."""
    from tqdm.auto import tqdm

    channels = int(model.backbone_config.in_channels)
    kept, rows, skipped = [], [], []
    with torch.no_grad():
        for path in tqdm(list(paths), disable=not progress, desc="embed gallery", unit="image", leave=False):
            try:
                image = _load_tensor(Path(path), channels)
                model.check_images(image)
            except WeakgroundError as exc:  # one unreadable file must not cost the whole index
                skipped.append(f"{path}: {exc}")
                continue
            rows.append(model.encode_image(image)[0].float().cpu())
            kept.append(str(path))
    if not rows:
        raise WeakgroundError("no readable image to index" + (f" ({skipped[0]})" if skipped else ""))
    return Gallery(kept, torch.stack(rows), model.name, checkpoint), skipped


def save_gallery(gallery: Gallery, path: Path) -> None:
    from safetensors.torch import save

    from weakground.engine.checkpoint import atomic_write_bytes

    meta = {"paths": json.dumps(gallery.paths), "method": gallery.method, "checkpoint": gallery.checkpoint}
    atomic_write_bytes(Path(path), save({"embeddings": gallery.embeddings.contiguous()}, metadata=meta))


def load_gallery(path: Path) -> Gallery:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeakgroundError(f"{path}: gallery file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            embeddings = f.get_tensor("embeddings")
        paths = json.loads(meta["paths"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise WeakgroundError(f"{path}: not a weakground gallery file ({str(exc).splitlines()[0]})") from None
    if len(paths) != len(embeddings):
        raise WeakgroundError(f"{path}: gallery lists {len(paths)} images but holds {len(embeddings)} embeddings")
    return Gallery(paths, embeddings, meta.get("method", ""), meta.get("checkpoint", ""))


class NearestImages:
    """Top-k inner-product search over ``[N, D]`` embeddings: exact below ``faiss_from`` rows, FAISS HNSW above."""

    def __init__(self, embeddings: Tensor, faiss_from: int = FAISS_MIN_GALLERY) -> None:
        self.embeddings = embeddings.float()
        self.index = None
        if len(embeddings) >= faiss_from:
            import faiss

            self.index = faiss.IndexHNSWFlat(embeddings.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            self.index.add(np.ascontiguousarray(self.embeddings.numpy(), dtype=np.float32))

    @property
    def uses_faiss(self) -> bool:
        return self.index is not None

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``[Q, D]`` queries -> (``[Q, k']`` scores, ``[Q, k']`` row indices), best first, ``k' = min(k, N)``."""
        k = min(k, len(self.embeddings))
        if self.index is None:
            return (queries.float() @ self.embeddings.T).topk(k, dim=1)
        self.index.hnsw.efSearch = max(64, 2 * k)
        scores, rows = self.index.search(np.ascontiguousarray(queries.float().numpy(), dtype=np.float32), k)
        return torch.from_numpy(scores), torch.from_numpy(rows).long()


def search_text(model: Any, gallery: Gallery, texts: list[str], k: int = 5, rerank: int = 0,
                faiss_from: int = FAISS_MIN_GALLERY) -> list[list[dict[str, Any]]]:
    """For each text, the ``k`` best gallery images as ``{"path", "score", "rank"}`` (rank 1 = best).

    ``rerank > 0`` re-scores the first stage's top ``max(k, rerank)`` images with ``model.scores``.
    """
    searcher = NearestImages(gallery.embeddings, faiss_from)
    with torch.no_grad():
        queries = model.encode_text(texts).float().cpu()
        first_scores, first_rows = searcher.search(queries, max(k, rerank))
        results = []
        for q, text in enumerate(texts):
            rows, scores = first_rows[q].tolist(), first_scores[q].tolist()
            if rerank > 0:
                channels = int(model.backbone_config.in_channels)
                scores = [float(model.scores(_load_tensor(Path(gallery.paths[r]), channels), [text])[0, 0])
                          for r in rows]
                order = sorted(range(len(rows)), key=lambda i: -scores[i])
                rows, scores = [rows[i] for i in order], [scores[i] for i in order]
            results.append([{"rank": i + 1, "path": gallery.paths[r], "score": round(s, 5)}
                            for i, (r, s) in enumerate(zip(rows[:k], scores[:k]))])
    return results


def rank_captions(model: Any, image: Tensor, captions: list[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` captions that ``model.scores`` ranks highest for one ``[1, C, H, W]`` image."""
    with torch.no_grad():
        scores = model.scores(image, captions)[0].float().cpu()
    top = scores.topk(min(k, len(captions)))
    return [{"rank": i + 1, "caption": captions[j], "score": round(float(s), 5)}
            for i, (s, j) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]


# ------------------------------------------------------------------------------- the trained score, in full

TEXT_CHUNK = 256  # captions whose score features are encoded (and scored against an image) at once


class TrainedScorer:
    """Every image x caption score of a joint-space method's exact ``scores``, without re-encoding: the captions'
    score features are computed once (``text_chunk`` at a time) and each image's once, then each image is scored
    against every chunk. ``scores(images, texts)`` itself would re-encode every caption for every image (MiniLM,
    5,000 captions x 1,000 images on the scenes' test split).

    A method splits its score into ``score_image_features(images)``, ``score_text_features(texts)`` and
    ``score_features(image_features, text_features) -> [B, T]`` (``multilevel``, ``matchmap``); for any other the
    parts are the images, the texts and ``scores`` itself (exact, but caption encoding is repeated per image).
    """

    def __init__(self, model: Any, texts: Sequence[str], text_chunk: int = TEXT_CHUNK) -> None:
        if text_chunk < 1:
            raise ValueError(f"text_chunk must be >= 1, got {text_chunk}")
        self.model, self.n_texts = model, len(texts)
        split = all(hasattr(model, name) for name in ("score_image_features", "score_text_features",
                                                      "score_features"))
        self._image = model.score_image_features if split else (lambda images: images)
        self._pair = model.score_features if split else model.scores
        encode = model.score_text_features if split else list
        with torch.no_grad():
            self._chunks = [encode(list(texts[s:s + text_chunk])) for s in range(0, len(texts), text_chunk)]

    @torch.no_grad()
    def rows(self, images: Tensor) -> Tensor:
        """``[B, T]`` scores of ``images`` (one batch) against every caption, on the CPU in float32."""
        features = self._image(images)
        if not self._chunks:
            return torch.zeros(images.shape[0], 0)
        return torch.cat([self._pair(features, chunk).float().cpu() for chunk in self._chunks], dim=1)


def trained_score_matrix(model: Any, images: Sequence[Tensor], texts: Sequence[str],
                         text_chunk: int = TEXT_CHUNK) -> Tensor:
    """``[len(images), len(texts)]`` exact scores; each entry of ``images`` a ``[1, C, H, W]`` (or ``[B, ...]``)
    batch, rows in order. See :class:`TrainedScorer`."""
    scorer = TrainedScorer(model, texts, text_chunk)
    rows = [scorer.rows(image) for image in images]
    return torch.cat(rows) if rows else torch.zeros(0, len(texts))
