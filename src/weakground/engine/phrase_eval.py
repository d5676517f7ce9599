"""Phrase-level evaluation: any :class:`~weakground.methods.Grounder` on any dataset the readers understand.

``source (FORMAT:PATH, split) -> records -> image + its phrases -> model.grounding_maps -> pointing metrics -> report``

* Queries: every grounded phrase mention of every caption is one query (Flickr30K Entities practice: "a man"
  in two captions is two queries), plus every class-labelled object of the image (COCO instances, where the
  category name is the phrase). A query's ground truth is all of its boxes.
* Per image the distinct phrase texts are asked in one ``model.grounding_maps`` call (chunks of ``phrase_batch``),
  at the image's own size; each map stays as ``grounding_maps`` returns it (the method's grid, or the prepared
  image's resolution when shifted copies are averaged) for the pointing game, which resizes it to the image with
  :func:`~weakground.metrics.resize_heatmap`, or takes the grid argmax, as the protocol says.
* Scores: the pointing game (:func:`~weakground.metrics.pointing_game`) under an explicit
  :class:`~weakground.metrics.PointingProtocol`; attention correctness and box accuracy (the top box of each
  :class:`~weakground.metrics.BoxRule` at IoU >= 0.5 with any of the phrase's boxes) over the same scored
  queries; presence AUROC (the method's :meth:`~weakground.methods.Grounder.presence_scores` of each image's own
  phrases against as many of other images' phrases whose head noun none of its phrases has); the centre
  and random baselines over the same queries and protocol; a per-type breakdown; and, for methods with a joint
  image-text space (``has_joint_space``), Recall@K in both directions over the split's captions, ranked by the
  ``encode_image``/``encode_text`` dot product (``retrieval="embedding"``) or by the method's trained ``scores`` of
  every image with every caption (``"score"``; :class:`~weakground.engine.retrieval.TrainedScorer`).
* Phrase context: ``"phrase"`` asks each phrase text on its own; ``"sentence"`` reads each caption phrase inside its
  caption (Akbari et al.'s Flickr30K protocol, :mod:`weakground.methods.phrase_context`).
* Bad input: the reader skips and counts what it cannot use (``file:line``); images that cannot be decoded,
  whose size differs from the annotation, or that the method rejects are skipped and counted here with their
  file names. ``strict=True`` turns the first such problem into a one-line :class:`WeakgroundError`.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from weakground.data.readers import parse_spec, read_dataset
from weakground.data.types import ImageRecord, Phrase, Problem
from weakground.errors import InputError, WeakgroundError
from weakground.methods.base import Grounder
from weakground.metrics import (
    BoxRule,
    PointingProtocol,
    attention_correctness,
    auroc,
    box_accuracy,
    breakdown_by_type,
    center_baseline,
    heatmap_point,
    pointing_game,
    random_baseline_accuracy,
    resize_heatmap,
    retrieval_report,
)

__all__ = ["evaluate_phrase_grounding", "protocol_line", "format_phrase_report", "UNTYPED"]

UNTYPED = "(untyped)"  # by_type key of phrases whose source gives no type (ReferIt, Visual Genome)
_MAX_LISTED = 20  # file names listed per skip reason; the count is always complete
_TEXT_CHUNK = 256  # captions encoded at once for retrieval
# Box accuracy is reported for each: what `locate` draws today (components at half the peak) and one box per object.
DEFAULT_BOX_RULES = (BoxRule("threshold", threshold=0.5), BoxRule("instance"))
BOX_IOU = 0.5


@dataclass
class _Query:
    text: str
    boxes: Tensor  # [G, 4] float64 xyxy
    size: tuple[int, int]  # (H, W)
    types: list[str]


@dataclass
class _Skips:
    """Skip reasons -> file names, in the order met."""

    files: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, file: str) -> None:
        self.files.setdefault(reason, []).append(file)

    def report(self) -> dict[str, Any]:
        return {"count": sum(len(v) for v in self.files.values()),
                "reasons": {r: {"count": len(v), "files": v[:_MAX_LISTED]} for r, v in self.files.items()}}


def _reader_skips(problems: list[Problem]) -> dict[str, Any]:
    reasons: dict[str, dict[str, Any]] = {}
    for p in problems:
        entry = reasons.setdefault(p.reason, {"count": 0, "by_design": p.by_design, "files": []})
        entry["count"] += 1
        if len(entry["files"]) < _MAX_LISTED:
            entry["files"].append(p.where)
    return {"count": sum(not p.by_design for p in problems), "by_design": sum(p.by_design for p in problems),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1]["count"], kv[0])))}


def _queries(record: ImageRecord) -> list[Phrase]:
    return [p for c in record.captions for p in c.phrases] + list(record.objects)


@functools.lru_cache(maxsize=65536)  # a split's phrases are drawn as absent candidates for image after image
def _head(text: str) -> str:
    # The head-noun rule of `bridge` (a word-list noun-phrase reduction, no parser), used here only to keep an
    # absent phrase from naming what the image shows under another wording ("a dog" / "the dog").
    from weakground.methods.bridge import reduce_phrase

    return reduce_phrase(text).head


def _phrase_pool(records: list[ImageRecord]) -> list[str]:
    """Every distinct query text of the split, in first-seen order: where absent phrases are drawn from."""
    return list(dict.fromkeys(p.text for r in records for p in _queries(r) if p.text.strip()))


def _absent_phrases(present: list[str], pool: list[str], seed: int) -> list[str]:
    """As many phrases as ``present`` from ``pool`` (seeded), none sharing a head noun or text with ``present``."""
    heads, texts = {_head(t) for t in present}, {t.lower() for t in present}
    rng = np.random.default_rng([seed, 31])
    chosen: list[str] = []
    for i in rng.permutation(len(pool)):
        candidate = pool[i]
        if candidate.lower() not in texts and _head(candidate) not in heads and candidate not in chosen:
            chosen.append(candidate)
            if len(chosen) == len(present):
                break
    return chosen


def _load_image(record: ImageRecord, channels: int, strict: bool, skips: _Skips) -> Tensor | None:
    """``[1, C, H, W]`` float image in [0, 1], or ``None`` (skipped and counted) when it cannot be used."""
    from weakground.io import read_image

    if record.path is None:
        problem = f"image {record.image_id}: the dataset names no image file"
        if strict:
            raise WeakgroundError(problem)
        skips.add("no image file named", f"image {record.image_id}")
        return None
    try:
        array = read_image(record.path, channels=channels)
    except InputError:
        if strict:
            raise  # already one line naming the file and the cause
        skips.add("unreadable image", str(record.path))
        return None
    if array.shape[:2] != (record.height, record.width):
        if strict:
            raise WeakgroundError(f"{record.path}: image is {array.shape[1]}x{array.shape[0]} but its annotation says "
                                  f"{record.width}x{record.height} (boxes would not line up)")
        skips.add("image size differs from annotation", str(record.path))
        return None
    tensor = torch.from_numpy(array).float().div_(255.0)
    return tensor[None, None] if array.ndim == 2 else tensor.permute(2, 0, 1)[None]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "phrase"


def _nan_to_none(value: Any) -> Any:
    # JSON has no NaN: an undefined mean (no scored query) is written as null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


@torch.no_grad()
def evaluate_phrase_grounding(model: Grounder, spec: str, split: str = "test", protocol: PointingProtocol | None = None,
                              *, strict: bool = False, max_images: int | None = None,
                              device: torch.device | str = "cpu", progress: bool = False,
                              visualize_dir: Path | None = None, n_visualize: int = 16,
                              phrase_batch: int = 64, box_rules: Sequence[BoxRule] = DEFAULT_BOX_RULES,
                              presence_scores: bool = False, phrase_context: str = "phrase",
                              retrieval: str = "embedding") -> dict[str, Any]:
    """Score ``model``'s phrase heatmaps on one split of a dataset (see the module docstring).

    Args:
        model: any Grounder: its ``grounding_maps`` (``grounding_maps_in_context`` in sentence context), and with
            a joint space ``encode_image``/``encode_text`` (and its trained score with retrieval ``"score"``).
        spec: ``FORMAT:PATH``, e.g. ``"flickr30k_entities:/data/flickr30k"``.
        split: the split to read (``"test"``, ``"val"``, ``"test_unseen"``, a COCO ``"val2014"``, ``"all"``).
        protocol: pointing-game settings; defaults to ``PointingProtocol()`` (0 px, any box, no min area,
            argmax on the resized map).
        strict: the first reader or image problem (not by design) raises instead of being skipped.
        max_images: score only the first N records of the split.
        device: where images and the model run. progress: show a tqdm bar over images (on stderr).
        visualize_dir: write one overlay PNG (map, predicted point, ground-truth boxes) per query here, for the
            first ``n_visualize`` queries.
        n_visualize: how many queries to draw.
        phrase_batch: most phrases asked of one image in one ``grounding_maps`` call.
        box_rules: the rules whose top box is scored for ``box_accuracy`` (keyed by :attr:`BoxRule.name`).
        presence_scores: also return the raw presence scores (``presence.present_scores``/``absent_scores``),
            e.g. to fit a :class:`~weakground.metrics.PresenceCalibration` on a validation split.
        phrase_context: ``"phrase"`` (each phrase on its own) or ``"sentence"`` (inside its caption; see above).
        retrieval: ``recall`` ranked by the ``"embedding"`` dot product, or by the trained ``"score"`` (then with
            the embedding's figures alongside as ``recall_embedding``).

    Returns:
        ``{"pointing_accuracy", "n_queries", "n_evaluated", "n_hits", "n_images", "protocol", "baselines":
        {"center", "random"}, "attention_correctness", "box_accuracy": {rule name: accuracy}, "by_type": {type: {"pointing_accuracy",
        "attention_correctness", "count"}}, "skipped": {"reader", "images", "queries"}, "recall"`` (joint-space
        methods only) ``, "method", "visualizations", "seconds"}``. Accuracies are fractions in [0, 1]; ``None``
        where no query was scored.

    Raises:
        WeakgroundError: a bad spec or split, a fatal reader problem, or with ``strict`` the first problem.
    """
    from tqdm.auto import tqdm

    protocol = protocol or PointingProtocol()
    fmt, _ = parse_spec(spec)
    channels = _check_arguments(model, max_images, n_visualize, phrase_context, retrieval)
    t0 = time.time()
    result = read_dataset(spec, split=split, strict=strict)
    records = result.records[:max_images] if max_images is not None else result.records
    run = _Evaluation(model.to(device).eval(), protocol, channels, device, strict, phrase_batch, visualize_dir,
                      n_visualize, tuple(box_rules), _phrase_pool(records), phrase_context=phrase_context)
    if retrieval == "score" and run.joint:
        run.start_scoring(records)
    for record in tqdm(records, disable=not progress, desc="evaluate phrases", unit="image", leave=False):
        run.add(record)
    source = {"dataset": spec, "format": fmt, "split": split, "max_images": max_images}
    report = run.report({**source, "phrase_context": phrase_context, "retrieval": retrieval}, result.problems)
    report["seconds"] = round(time.time() - t0, 2)
    if presence_scores:
        report["presence"].update(present_scores=run.presence_present, absent_scores=run.presence_absent)
    return _nan_to_none(report)


def _check_arguments(model: Grounder, max_images: int | None, n_visualize: int, phrase_context: str = "phrase",
                     retrieval: str = "embedding") -> int:
    """The channels ``model`` reads images with, after checking the arguments that no data is needed for."""
    _check_options(model, phrase_context, retrieval)
    if max_images is not None and max_images < 1:
        raise WeakgroundError(f"max_images must be >= 1, got {max_images}")
    if n_visualize < 0:
        raise WeakgroundError(f"n_visualize must be >= 0, got {n_visualize}")
    channels = int(model.backbone_config.in_channels)
    if channels not in (1, 3):
        raise WeakgroundError(f"method {model.name!r} reads {channels}-channel images; image files give 1 or 3")
    return channels


PHRASE_CONTEXTS = ("phrase", "sentence")
RETRIEVAL_SCORES = ("embedding", "score")


def _check_options(model: Grounder, phrase_context: str, retrieval: str) -> None:
    if phrase_context not in PHRASE_CONTEXTS:
        raise WeakgroundError(f"phrase_context must be one of {', '.join(PHRASE_CONTEXTS)}, got {phrase_context!r}")
    if retrieval not in RETRIEVAL_SCORES:
        raise WeakgroundError(f"retrieval must be one of {', '.join(RETRIEVAL_SCORES)}, got {retrieval!r}")
    if phrase_context == "sentence" and not getattr(model, "reads_phrases_in_context", False):
        raise WeakgroundError(f"method {model.name!r} encodes phrases only on their own: phrase context 'sentence' "
                              "needs a method that reads them inside their caption (multilevel, matchmap)")


def _mean(values: list[Any]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class _Evaluation:
    """Scoring one split, image by image: the settings, and everything accumulated so far for the report."""

    model: Grounder
    protocol: PointingProtocol
    channels: int
    device: torch.device | str
    strict: bool
    phrase_batch: int
    visualize_dir: Path | None
    n_visualize: int
    box_rules: tuple[BoxRule, ...] = DEFAULT_BOX_RULES
    phrase_pool: list[str] = field(default_factory=list)  # the split's phrase texts: absent phrases come from here
    skips: _Skips = field(default_factory=_Skips)
    presence_present: list[float] = field(default_factory=list)  # presence_scores of images' own phrases
    presence_absent: list[float] = field(default_factory=list)  # and of other images' non-matching phrases
    queries: list[_Query] = field(default_factory=list)
    hits: list[bool | None] = field(default_factory=list)
    correctness: list[float | None] = field(default_factory=list)  # aligned with hits; None where hit is None
    top_boxes: list[list[Tensor] | None] = field(default_factory=list)  # aligned with hits: one box per rule
    n_images: int = 0
    n_without_queries: int = 0
    image_emb: list[Tensor] = field(default_factory=list)  # joint-space methods: one per scored image
    captions: list[str] = field(default_factory=list)  # and their non-empty captions,
    caption_image: list[int] = field(default_factory=list)  # each with its image's index in image_emb
    drawn: list[str] = field(default_factory=list)
    phrase_context: str = "phrase"
    scorer: Any = None  # retrieval "score": a TrainedScorer over every caption of the split (start_scoring)
    caption_record: list[int] = field(default_factory=list)  # the scorer's caption columns: each one's record
    score_rows: list[Tensor] = field(default_factory=list)  # per scored image, its scores against every column
    scored_records: list[int] = field(default_factory=list)  # the record index of each scored image
    n_seen: int = 0  # records given to add() so far

    @property
    def joint(self) -> bool:
        return bool(getattr(self.model, "has_joint_space", False))

    def start_scoring(self, records: list[ImageRecord]) -> None:
        """Retrieval from the trained score: encode every non-empty caption of ``records`` once, before any image
        (columns of images that are then skipped are dropped in the report)."""
        from weakground.engine.retrieval import TrainedScorer

        columns = [(k, c.text) for k, r in enumerate(records) for c in r.captions if c.text.strip()]
        self.caption_record = [k for k, _ in columns]
        self.scorer = TrainedScorer(self.model, [t for _, t in columns])

    def add(self, record: ImageRecord) -> None:
        """Score one record's queries (and keep its embeddings for retrieval), or count why it was skipped."""
        phrases = _queries(record)
        self.n_seen += 1
        if not phrases and not self.joint:
            self.n_without_queries += 1
            return
        image = self._image(record)
        if image is None:
            return
        self.n_images += 1
        self.n_without_queries += not phrases
        self._point(record, image, phrases)
        self._presence(image, phrases)
        if self.joint:
            if self.scorer is not None:
                self.score_rows.append(self.scorer.rows(image)[0])
                self.scored_records.append(self.n_seen - 1)
            self.image_emb.append(self.model.encode_image(image)[0])
            for caption in record.captions:
                if caption.text.strip():
                    self.captions.append(caption.text)
                    self.caption_image.append(len(self.image_emb) - 1)

    def _image(self, record: ImageRecord) -> Tensor | None:
        """The record's image on the device, or ``None`` (skipped and counted) when it or the method refuses."""
        image = _load_image(record, self.channels, self.strict, self.skips)
        if image is None:
            return None
        image = image.to(self.device)
        try:
            self.model.check_images(image)
        except InputError as exc:
            if self.strict:
                raise WeakgroundError(f"{record.path}: {exc}") from None
            self.skips.add("image rejected by the method", str(record.path))
            return None
        return image

    def _point(self, record: ImageRecord, image: Tensor, phrases: list[Phrase]) -> None:
        """The pointing game and attention correctness on one image's queries; overlays while any are left."""
        size = (record.height, record.width)
        maps = _query_maps(self.model, image, record, self.phrase_batch, self.phrase_context)  # aligned with phrases
        image_queries = [_Query(p.text, torch.tensor([b.as_list() for b in p.boxes], dtype=torch.float64)
                                .reshape(-1, 4), size, list(p.phrase_types) or [UNTYPED]) for p in phrases]
        image_hits = pointing_game(maps, [q.boxes for q in image_queries],
                                   [size] * len(image_queries), self.protocol)["hits"]
        for q, heatmap, hit in zip(image_queries, maps, image_hits):
            # Attention correctness and box accuracy are averaged over exactly the queries the pointing game scores.
            self.correctness.append(None if hit is None else attention_correctness(heatmap, q.boxes, size))
            self.top_boxes.append(None if hit is None else self._top_boxes(heatmap, size))
            if self.visualize_dir is not None and len(self.drawn) < self.n_visualize:
                self.drawn.append(str(_draw(image, heatmap, q, hit, self.protocol, Path(self.visualize_dir),
                                            len(self.drawn), record.image_id)))
        self.queries += image_queries
        self.hits += image_hits

    def _presence(self, image: Tensor, phrases: list[Phrase]) -> None:
        present = list(dict.fromkeys(p.text for p in phrases if p.text.strip()))
        absent = _absent_phrases(present, self.phrase_pool, self.n_images)
        if not present or not absent:
            return
        scores = self.model.presence_scores(image, present + absent)[0].float().cpu().tolist()
        self.presence_present += scores[:len(present)]
        self.presence_absent += scores[len(present):]

    def _presence_report(self) -> dict[str, Any]:
        pos, neg = np.array(self.presence_present), np.array(self.presence_absent)
        return {"auroc": auroc(pos, neg) if pos.size and neg.size else float("nan"),
                "n_present": int(pos.size), "n_absent": int(neg.size)}

    def _top_boxes(self, heatmap: Tensor, size: tuple[int, int]) -> list[Tensor]:
        resized = resize_heatmap(heatmap.detach().float(), size).cpu()
        return [rule.top_box(resized) for rule in self.box_rules]

    def _box_accuracy(self) -> dict[str, float]:
        scored = [(boxes, q.boxes) for boxes, q in zip(self.top_boxes, self.queries) if boxes is not None]
        return {rule.name: box_accuracy([b[i] for b, _ in scored], [gt for _, gt in scored], BOX_IOU)
                if scored else float("nan") for i, rule in enumerate(self.box_rules)}

    def report(self, source: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
        """The report :func:`evaluate_phrase_grounding` returns, without ``seconds`` and with NaN left in.

        ``source``: the ``dataset``, ``format``, ``split`` and ``max_images`` the protocol section names.
        """
        scored = [h for h in self.hits if h is not None]
        boxes, sizes = [q.boxes for q in self.queries], [q.size for q in self.queries]
        by_type = self._by_type()
        report: dict[str, Any] = {
            "method": self.model.name,
            "pointing_accuracy": _mean(scored),
            "n_queries": len(self.queries),
            "n_evaluated": len(scored),
            "n_hits": int(sum(scored)),
            "n_images": self.n_images,
            "protocol": {
                **self.protocol.describe(),
                **source,
                "accuracy": "per query: each phrase mention in each caption (and each labelled object) is one query",
                "heatmap_resize": "bilinear, align_corners=False, to the annotated image size",
                "attention_correctness": "mean over the queries the pointing game scores",
                "box_accuracy": f"per rule, its top box has IoU >= {BOX_IOU} with any ground-truth box of the "
                                "phrase, over the queries the pointing game scores; threshold@t: 8-connected "
                                "regions of the map >= t x its maximum (what locate draws), instance: one region "
                                "grown from each peak (weakground.metrics.instances)",
                "presence": "AUROC of the method's presence_scores: each image's distinct phrase texts (present) "
                            "against as many phrases of other images of the split (absent; seeded per image) "
                            "whose head noun and text differ from all of the image's phrases",
            },
            "baselines": {"center": center_baseline(boxes, sizes, self.protocol),
                          "random": random_baseline_accuracy(boxes, sizes, self.protocol)},
            "attention_correctness": _mean([a for a in self.correctness if a is not None]),
            "box_accuracy": self._box_accuracy(),
            "presence": self._presence_report(),
            "by_type": by_type,
            "skipped": self._skipped(problems, len(scored)),
        }
        if self.joint:
            report["recall"] = _recall(self.model, self.image_emb, self.captions, self.caption_image)
            if self.scorer is not None:
                report["recall_embedding"] = report["recall"]
                report["recall"] = self._recall_from_scores()
        if self.visualize_dir is not None:
            report["visualizations"] = self.drawn
        return report

    def _recall_from_scores(self) -> dict[str, Any]:
        """Recall@K from the trained score rows, over the captions of the scored images (the embedding recall's
        captions, in the same order)."""
        from weakground.metrics.retrieval import retrieval_report_from_scores

        position = {k: i for i, k in enumerate(self.scored_records)}
        keep = [j for j, k in enumerate(self.caption_record) if k in position]
        if not self.score_rows or not keep:
            return _recall(self.model, [], [], [])
        scores = torch.stack(self.score_rows)[:, keep]
        text_to_image = torch.tensor([position[self.caption_record[j]] for j in keep])
        return retrieval_report_from_scores(scores, text_to_image)

    def _by_type(self) -> dict[str, dict[str, Any]]:
        types = [q.types for q in self.queries]
        point_types = breakdown_by_type(self.hits, types)
        ac_types = breakdown_by_type(self.correctness, types)
        return {t: {"pointing_accuracy": point_types[t]["mean"], "attention_correctness": ac_types[t]["mean"],
                    "count": point_types[t]["count"]} for t in point_types}

    def _skipped(self, problems: list[Problem], n_scored: int) -> dict[str, Any]:
        return {
            "reader": _reader_skips(problems),
            "images": self.skips.report(),
            "queries": {"count": len(self.hits) - n_scored,
                        "reason": "no valid box, or union box below min_area of the image"},
            "images_without_queries": self.n_without_queries,
        }


def _phrase_maps(model: Grounder, image: Tensor, phrases: list[Phrase], phrase_batch: int,
                 record: ImageRecord) -> dict[str, Tensor]:
    """Each distinct phrase text of one image -> its ``[h, w]`` map (asked ``phrase_batch`` texts at a time)."""
    texts = list(dict.fromkeys(p.text for p in phrases))
    maps: dict[str, Tensor] = {}
    for start in range(0, len(texts), phrase_batch):
        chunk = texts[start:start + phrase_batch]
        maps.update(zip(chunk, _checked(model.grounding_maps(image, chunk), len(chunk), model, record)))
    return maps


def _query_maps(model: Grounder, image: Tensor, record: ImageRecord, phrase_batch: int,
                phrase_context: str) -> list[Tensor]:
    """One ``[h, w]`` map per query of ``record`` (:func:`_queries` order). ``"phrase"``: by text, each distinct
    text asked once. ``"sentence"``: each caption phrase read inside its caption (one ``grounding_maps_in_context``
    call per ``phrase_batch`` phrases, all the image's captions encoded together); labelled objects and phrases
    that are no span of their caption are asked by text, as they have no sentence."""
    phrases = _queries(record)
    if phrase_context == "phrase":
        by_text = _phrase_maps(model, image, phrases, phrase_batch, record)
        return [by_text[p.text] for p in phrases]
    sentences = [c.text for c in record.captions]
    slots = [(i, p) for i, c in enumerate(record.captions) for p in c.phrases]  # caption phrases, in _queries order
    spans = [(i, p.first_word_index, p.first_word_index + len(p.text.split())) for i, p in slots
             if p.first_word_index is not None and p.text.split()]
    in_context: list[Tensor] = []
    for start in range(0, len(spans), phrase_batch):
        chunk = spans[start:start + phrase_batch]
        in_context += list(_checked(model.grounding_maps_in_context(image, sentences, chunk), len(chunk), model,
                                    record))
    alone = [p for _, p in slots if p.first_word_index is None or not p.text.split()] + list(record.objects)
    by_text = _phrase_maps(model, image, alone, phrase_batch, record) if alone else {}
    context_maps = iter(in_context)
    return [next(context_maps) if p.first_word_index is not None and p.text.split() else by_text[p.text]
            for _, p in slots] + [by_text[p.text] for p in record.objects]


def _checked(out: Tensor, n: int, model: Grounder, record: ImageRecord) -> Tensor:
    """``out[0]``, the ``[n, h, w]`` maps of one image, after checking the shape and that every value is finite."""
    if out.ndim != 4 or out.shape[:2] != (1, n):
        raise RuntimeError(f"method {model.name!r} returned heatmaps of shape {tuple(out.shape)} for 1 image and "
                           f"{n} phrases; expected [1, {n}, h, w]")
    if not bool(torch.isfinite(out).all()):
        raise WeakgroundError(f"{record.path}: method {model.name!r} returned NaN or infinite heatmaps")
    return out[0]


def _recall(model: Grounder, image_emb: list[Tensor], captions: list[str],
            caption_image: list[int]) -> dict[str, Any]:
    """Recall@1/5/10 and median rank, both directions, over the evaluated images and their captions.

    Scores are dot products of ``encode_image`` ``[1, D]`` and ``encode_text`` ``[T, D]`` embeddings (methods
    whose space is cosine return unit vectors), computed in chunks by :func:`retrieval_report`.
    """
    if not image_emb or not captions:
        nan = {"R@1": float("nan"), "R@5": float("nan"), "R@10": float("nan"), "median_rank": float("nan"),
               "n_queries": 0}
        return {"text_to_image": dict(nan), "image_to_text": dict(nan)}
    images = torch.stack(image_emb)
    texts = torch.cat([model.encode_text(captions[s:s + _TEXT_CHUNK]) for s in range(0, len(captions), _TEXT_CHUNK)])
    return retrieval_report(images, texts.to(images.device), torch.tensor(caption_image))


def _draw(image: Tensor, heatmap: Tensor, query: _Query, hit: bool | None, protocol: PointingProtocol,
          out_dir: Path, index: int, image_id: str) -> Path:
    """One overlay PNG: the map resized to the image, the point the protocol takes, the ground-truth boxes."""
    from weakground.viz import overlay_figure

    pixels = image[0].permute(1, 2, 0).cpu().numpy()
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    resized = resize_heatmap(heatmap.detach().float(), query.size).cpu().numpy()
    point = heatmap_point(heatmap, query.size, protocol.argmax_on)
    verdict = "skipped" if hit is None else "hit" if hit else "miss"
    path = out_dir / f"{index:04d}_{_slug(image_id)}_{_slug(query.text)}.png"
    return overlay_figure(pixels, [resized], [f"{query.text} ({verdict})"], [query.boxes.tolist()], [point], path)


# ------------------------------------------------------------------------------------------------ printing


def protocol_line(protocol: dict[str, Any]) -> str:
    """The pointing protocol of a report on one line, e.g. ``"tolerance 0 px, any box, min area 0, argmax on
    the image-resized map, per-query accuracy"``."""
    rule = "any box" if protocol["box_rule"] == "any" else "union box"
    argmax = "image-resized map" if protocol["argmax_on"] == "image" else "feature grid"
    return (f"tolerance {protocol['tolerance']:g} px, {rule}, min area {protocol['min_area']:g}, argmax on the "
            f"{argmax}, per-query accuracy")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_phrase_report(report: dict[str, Any], max_types: int = 12) -> str:
    """A small plain-text table of a report (no trailing newline): protocol, accuracy, baselines, types."""
    skipped = report["skipped"]
    rows = [("pointing_accuracy", _fmt(report["pointing_accuracy"])),
            ("center baseline", _fmt(report["baselines"]["center"])),
            ("random baseline", _fmt(report["baselines"]["random"])),
            ("attention_correctness", _fmt(report["attention_correctness"])),
            *[(f"box acc, {rule.split('@')[0].split('(')[0]}", f"{_fmt(value)}  ({rule})")
              for rule, value in report.get("box_accuracy", {}).items()],
            ("presence AUROC", _fmt(report.get("presence", {}).get("auroc"))),
            ("queries scored / all", f"{report['n_evaluated']} / {report['n_queries']}"),
            ("images", str(report["n_images"])),
            ("images skipped", str(skipped["images"]["count"])),
            ("reader problems", f"{skipped['reader']['count']} (+{skipped['reader']['by_design']} by design)")]
    for key, label in (("recall", ""), ("recall_embedding", " (embedding)")):
        for direction in ("text_to_image", "image_to_text") if key in report else ():
            r = report[key][direction]
            medr = "n/a" if r["median_rank"] is None else f"{r['median_rank']:g}"
            rows.append((f"{direction} R@1/5/10, medr{label}",
                         f"{_fmt(r['R@1'])} / {_fmt(r['R@5'])} / {_fmt(r['R@10'])}, {medr}"))
    types = list(report["by_type"].items())
    if 1 < len(types) <= max_types:
        rows += [(f"  type {t}", f"{_fmt(v['pointing_accuracy'])}  (n={v['count']})") for t, v in types]
    width = max(len(k) for k, _ in rows)
    protocol = report["protocol"]
    lines = [f"{report['method']} on {protocol['dataset']} (split {protocol['split']})",
             f"protocol: {protocol_line(protocol)}"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
