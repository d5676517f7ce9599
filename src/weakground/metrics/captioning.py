"""Grounded image captioning metrics: the COCO caption scores and GVD's grounding F1 (F1_all, F1_loc).

Hu et al., "Spatial-Semantic Attention for Grounded Image Captioning" (ICIP 2022; ``../shared/seeds/004``),
Sec. 3.1, evaluate a grounded captioner on Flickr30k Entities from two sides:

* captioning: BLEU, METEOR, CIDEr and SPICE (:func:`caption_scores`, through ``pycocoevalcap``, the pip
  release of the MS-COCO caption evaluation code);
* grounding: ``F1_all`` and ``F1_loc`` "defined by GVD" (Zhou et al., "Grounded Video Description", CVPR 2019),
  :func:`grounding_f1`, which follows GVD's Flickr30k Entities script ``eval_grd_flickr30k_entities.py``
  (branch ``flickr_branch`` of facebookresearch/grounded-video-description), re-implemented here.

Grounding F1, the rules of GVD's ``grd_eval``: ``hit(b, B) = 1`` when ``max_{g in B} IoU(b, g) > iou_threshold``
(strictly: IoU exactly 0.5 is a miss, as in GVD's code), else 0. ``V`` is the set of classes annotated in the
reference captions of the images in ``generated``. Entries, each 0 or 1, are collected per class ``c``:

* precision, for every image ``i`` in ``generated``, every reference caption ``k`` of ``i`` and every generated
  word ``(c, b)`` of ``i``: if ``c`` is annotated in caption ``k``, ``hit(b, B)`` goes to ``P_all[c]`` and
  ``P_loc[c]`` (``B``: the boxes of the first annotated word of class ``c`` in ``k``); elif the caption
  mentions ``c`` without a box (``mentioned``), nothing; else 0 goes to ``P_all[c]`` (a hallucinated object);
* recall, for every image ``i`` in ``references``, caption ``k`` and annotated word ``(c, B)``: ``i`` absent
  from ``generated``: 0 to ``R_all[c]`` and ``R_loc[c]``; ``c`` generated in ``i``: ``hit(b, B)``, ``b`` the
  first generated word of class ``c``, to both; else 0 to ``R_all[c]`` only.

Every entry is per reference caption: a class named in 3 of the 5 captions of an image counts 3 times.

Every score is a fraction (pycocoevalcap's native scale: BLEU, METEOR, ROUGE-L, precision, recall and F1 in
[0, 1]; CIDEr-D, keyed ``"CIDEr"`` as in COCO, in [0, 10]), not percent: the papers' tables print 100x these.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from weakground.errors import InputError, WeakgroundError
from weakground.metrics.boxes import box_iou

__all__ = ["CAPTION_METRICS", "caption_scores", "grounding_f1", "simple_tokenize"]

#: The metric names :func:`caption_scores` knows (``"BLEU"`` stands for BLEU-1..4; ``"CIDEr"`` is CIDEr-D).
CAPTION_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

_SPICE_REASON = ("pycocoevalcap's SPICE needs Stanford CoreNLP 3.6.0, which it downloads from nlp.stanford.edu "
                 "on first use (spice/get_stanford_models.py); not attempted, this evaluation runs offline")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_TOKENIZERS = ("auto", "ptb", "simple")


def simple_tokenize(caption: str) -> str:
    """The tokenizer used when Java is missing: lowercase, keep runs of letters/digits, drop everything else.

    Apostrophes inside a word stay (``"man's" -> "man's"``; PTB would give ``"man 's"``), punctuation and other
    symbols are removed, and the tokens are joined by single spaces: ``"A dog, running!" -> "a dog running"``.
    Scores computed on it are close to, but not exactly, those on PTB tokens.
    """
    return " ".join(_WORD.findall(caption.lower()))


def _check_captions(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str]) -> None:
    if not candidates:
        raise InputError("caption_scores: candidates is empty (no image to score)")
    for image_id, candidate in candidates.items():
        if image_id not in references:
            raise InputError(f"caption_scores: image {image_id!r} is in candidates but not in references")
        if not isinstance(candidate, str):
            raise InputError(f"caption_scores: the candidate of image {image_id!r} is not a string")
        refs = references[image_id]
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise InputError(f"caption_scores: the references of image {image_id!r} must be a list of strings")
        if len(refs) == 0:
            raise InputError(f"caption_scores: image {image_id!r} has an empty reference list")
        for k, ref in enumerate(refs):
            if not isinstance(ref, str) or not ref.strip():
                raise InputError(f"caption_scores: reference {k} of image {image_id!r} is not a non-blank string")


def _tokenize(captions: Mapping[str, Sequence[str]], mode: str) -> dict[str, list[str]]:
    """``{image_id: [caption, ...]}`` -> the same with tokenized, lowercased, punctuation-free captions."""
    if mode == "simple":
        return {i: [simple_tokenize(c) for c in caps] for i, caps in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # one caption a line for the Java tokenizer: every whitespace run (newlines included) becomes one space
    wrapped = {i: [{"caption": " ".join(c.split())} for c in caps] for i, caps in captions.items()}
    out = PTBTokenizer().tokenize(wrapped)
    if {i: len(v) for i, v in out.items()} != {i: len(v) for i, v in captions.items()}:
        raise WeakgroundError("caption_scores: Stanford PTBTokenizer (java) did not return one line per caption")
    return out


def _pick_tokenizer(tokenizer: str) -> str:
    if tokenizer not in _TOKENIZERS:
        raise InputError(f"caption_scores: tokenizer must be one of {_TOKENIZERS}, got {tokenizer!r}")
    has_java = shutil.which("java") is not None
    if tokenizer == "ptb" and not has_java:
        raise WeakgroundError("caption_scores: tokenizer='ptb' runs Stanford PTBTokenizer, which needs java on PATH")
    return "ptb" if tokenizer == "ptb" or (tokenizer == "auto" and has_java) else "simple"


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float | None, str | None]:
    """METEOR 1.5 through pycocoevalcap's Java wrapper: ``(score, None)``, or ``(None, reason)`` when it cannot run."""
    if shutil.which("java") is None:
        return None, "java not found on PATH: METEOR 1.5 is a Java program (pycocoevalcap/meteor/meteor-1.5.jar)"
    from pycocoevalcap.meteor.meteor import Meteor

    # "|||" separates fields on the jar's stdin protocol; pycocoevalcap strips it from hypotheses only
    gts = {i: [r.replace("|||", " ") for r in refs] for i, refs in gts.items()}
    try:
        scorer = Meteor()
    except OSError as err:
        return None, f"METEOR could not start java: {err}"
    try:
        score, _ = scorer.compute_score(gts, res)
    except (OSError, ValueError) as err:  # a JVM that died answers nothing (ValueError) or breaks the pipe
        return None, f"METEOR's java process failed: {err!r}"
    finally:
        proc = scorer.meteor_p
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        proc.kill()
        proc.wait()
    return float(score), None


def _wanted(metrics: Collection[str] | None) -> set[str]:
    if metrics is None:
        return set(CAPTION_METRICS)
    if isinstance(metrics, str) or not set(metrics) <= set(CAPTION_METRICS):
        raise InputError(f"caption_scores: metrics must be a collection of {CAPTION_METRICS}, got {metrics!r}")
    return set(metrics)


def _score(gts: dict[str, list[str]], res: dict[str, list[str]], wanted: set[str]) -> dict[str, Any]:
    """The requested scores on tokenized captions, and ``"unavailable": {metric: reason}``."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    if "BLEU" in wanted:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "METEOR" in wanted:
        out["METEOR"], reason = _meteor(gts, res)
        if reason is not None:
            unavailable["METEOR"] = reason
    if "ROUGE-L" in wanted:
        out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in wanted:
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if "SPICE" in wanted:
        out["SPICE"] = None
        unavailable["SPICE"] = _SPICE_REASON
    out["unavailable"] = unavailable
    return out


def caption_scores(
    references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], *,
    metrics: Collection[str] | None = None, tokenizer: str = "auto",
) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE, reported unavailable) of one caption per image.

    The MS-COCO caption evaluation (Chen et al., arXiv:1504.00325) through ``pycocoevalcap``, as Hu et al.
    (ICIP 2022, Sec. 3.1) and GVD (Zhou et al., CVPR 2019) report it on Flickr30k Entities. All captions are
    tokenized first; then, over the images of ``candidates`` (references of other images are ignored):

    * ``BLEU-n`` (Papineni et al., ACL 2002), corpus level: ``BP * exp(mean_{k<=n} log p_k)``, ``p_k`` the
      clipped k-gram precision over all images, ``BP = min(1, exp(1 - r/c))`` with ``r`` the sum of the
      reference lengths closest to each candidate's.
    * ``METEOR`` 1.5 (Banerjee and Lavie, 2005; ``-l en -norm``), corpus level, run by Java.
    * ``ROUGE-L`` (Lin, 2004): per image ``(1+b^2) P R / (R + b^2 P)`` with ``b = 1.2`` and ``P``/``R`` the best
      LCS precision/recall over the references; the mean over images.
    * ``CIDEr`` is CIDEr-D (Vedantam et al., CVPR 2015, Sec. 8): pycocoevalcap's ``Cider``, the COCO server's
      variant: tf-idf n-gram vectors (n = 1..4, idf from the references of the evaluated images), candidate
      counts clipped at the reference's, a Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 * 6^2))``, the mean
      over n and over references, times 10. With a single image every idf is 0, so CIDEr-D is 0.

    Args:
        references: ``{image_id: [reference caption, ...]}``, at least one non-blank caption per scored image.
        candidates: ``{image_id: generated caption}``; every id must be in ``references``.
        metrics: which of ``CAPTION_METRICS`` (``"BLEU"`` gives BLEU-1..4) to compute; ``None`` (default): all.
            METEOR costs ~5-10 s (its JVM loads a paraphrase table).
        tokenizer: ``"ptb"``: pycocoevalcap's Stanford PTBTokenizer (Java; lowercases, drops punctuation), the
            COCO standard; ``"simple"``: :func:`simple_tokenize` (no Java); ``"auto"`` (default): PTB when
            ``java`` is on PATH, else simple.

    Returns:
        ``{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE": float | None, "unavailable":
        {metric: reason}, "tokenizer": "ptb" | "simple", "n_images": int}`` with the requested metrics only, as
        fractions (CIDEr-D in [0, 10]). A metric that could not run is ``None`` with its reason in
        ``"unavailable"``: SPICE always (it would download Stanford CoreNLP), METEOR when Java is missing or fails.

    Raises:
        InputError: a candidate id missing from ``references``, an empty or blank reference list, no candidates.
    """
    wanted = _wanted(metrics)
    _check_captions(references, candidates)
    mode = _pick_tokenizer(tokenizer)
    gts = _tokenize({i: list(references[i]) for i in candidates}, mode)
    res = _tokenize({i: [candidates[i]] for i in candidates}, mode)
    out = _score(gts, res, wanted)
    out.update(tokenizer=mode, n_images=len(res))
    return out


# ----------------------------------------------------------------------------------------------- grounding F1


def _boxes(value: Any, what: str, single: bool) -> torch.Tensor:
    """A ``[4]`` box (or, unless ``single``, a ``[K, 4]`` list of boxes) as a float64 ``[K, 4]`` tensor."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"grounding_f1: {what} is not a box [x1, y1, x2, y2]") from None
    if t.ndim == 1 and t.shape[0] == 4:
        return t[None]
    if not single and t.ndim == 2 and t.shape[0] >= 1 and t.shape[1] == 4:
        return t
    shape = "[4]" if single else "[4] or [K, 4] with K >= 1"
    raise InputError(f"grounding_f1: {what} must have shape {shape}, got {tuple(t.shape)}")


def _words(items: Any, what: str, single: bool) -> list[tuple[str, torch.Tensor]]:
    """Validate a list of ``(class_name, box(es))`` pairs."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InputError(f"grounding_f1: {what} must be a list of (class_name, box) pairs")
    out = []
    for k, item in enumerate(items):
        if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str) and item[0]):
            raise InputError(f"grounding_f1: word {k} of {what} is not a (class_name, box) pair")
        out.append((item[0], _boxes(item[1], f"the box of word {k} ({item[0]!r}) of {what}", single)))
    return out


def _hit(pred: torch.Tensor, gt: torch.Tensor, iou_threshold: float) -> int:
    """1 when the predicted box overlaps one of the ``[K, 4]`` ground-truth boxes with IoU > threshold, else 0."""
    return int(float(box_iou(pred, gt).max()) > iou_threshold)


def _image_entries(words: list | None, captions: list[list], excused: Sequence[Collection[str]],
                   thr: float, lists: dict[str, defaultdict]) -> None:
    """Append one image's 0/1 precision and recall entries, per class, in both modes (GVD's two loops)."""
    first_generated: dict[str, torch.Tensor] = {}
    for cls, box in words or ():
        first_generated.setdefault(cls, box)
    for k, caption in enumerate(captions):
        first_annotated: dict[str, torch.Tensor] = {}
        for cls, boxes in caption:
            first_annotated.setdefault(cls, boxes)
            if words is None:  # image not in the submission: every reference word is missed, in both modes
                lists["rec_all"][cls].append(0)
                lists["rec_loc"][cls].append(0)
            elif cls in first_generated:  # compared with the first generated word of that class
                hit = _hit(first_generated[cls], boxes, thr)
                lists["rec_all"][cls].append(hit)
                lists["rec_loc"][cls].append(hit)
            else:
                lists["rec_all"][cls].append(0)
        for cls, box in words or ():
            if cls in first_annotated:  # compared with the first annotated word of that class in this caption
                hit = _hit(box, first_annotated[cls], thr)
                lists["prec_all"][cls].append(hit)
                lists["prec_loc"][cls].append(hit)
            elif cls not in excused[k]:  # hallucinated (a word the caption mentions without a box is not)
                lists["prec_all"][cls].append(0)


def _mentioned(value: Any, n_captions: int, image_id: str) -> list[Collection[str]]:
    """``mentioned[image_id]`` as one word set per reference caption (a flat set applies to every caption)."""
    what = f"grounding_f1: mentioned[{image_id!r}]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise InputError(f"{what} must be a set of words, or one set per reference caption")
    if all(isinstance(w, str) for w in value):
        return [set(value)] * n_captions
    if not isinstance(value, Sequence) or len(value) != n_captions or any(
            isinstance(c, (str, bytes)) or not isinstance(c, Collection) for c in value):
        raise InputError(f"{what} must be a set of words, or one set per reference caption ({n_captions})")
    return [set(c) for c in value]


def _read_image(image_id: str, generated: Mapping, references: Mapping, mentioned: Mapping | None):
    """One image's validated ``(words or None, captions, excused words per caption)``."""
    captions = references[image_id]
    if isinstance(captions, Mapping):  # per-image ground truth {class: boxes}: one pseudo-caption
        captions = [list(captions.items())]
    if isinstance(captions, (str, bytes)) or not isinstance(captions, Sequence) or len(captions) == 0:
        raise InputError(f"grounding_f1: image {image_id!r} needs {{class: boxes}} or a non-empty list of "
                         "reference captions")
    parsed = [_words(c, f"reference caption {k} of image {image_id!r}", False) for k, c in enumerate(captions)]
    excused: list[Collection[str]] = [()] * len(captions)
    if mentioned is not None and image_id in mentioned:
        excused = _mentioned(mentioned[image_id], len(captions), image_id)
    words = None
    if image_id in generated:
        words = _words(generated[image_id], f"generated[{image_id!r}]", True)
    return words, parsed, excused


def _collect(generated: Mapping, references: Mapping, mentioned: Mapping | None,
             iou_threshold: float) -> tuple[dict[str, defaultdict], set[str]]:
    """All images' entries ``{"prec_all"|"prec_loc"|"rec_all"|"rec_loc": {class: [0/1, ...]}}`` and ``V``."""
    if not 0 <= iou_threshold < 1:
        raise InputError(f"grounding_f1: iou_threshold must lie in [0, 1), got {iou_threshold}")
    for image_id in generated:
        if image_id not in references:
            raise InputError(f"grounding_f1: image {image_id!r} is in generated but not in references")
    lists = {name: defaultdict(list) for name in ("prec_all", "prec_loc", "rec_all", "rec_loc")}
    vocab: set[str] = set()
    for image_id in references:
        words, captions, excused = _read_image(image_id, generated, references, mentioned)
        if words is not None:
            vocab.update(cls for caption in captions for cls, _ in caption)
        _image_entries(words, captions, excused, iou_threshold, lists)
    if not vocab:
        raise InputError("grounding_f1: the references of the generated images have no annotated object word")
    return lists, vocab


def _mean(entries: list[int]) -> float:
    return sum(entries) / len(entries) if entries else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def grounding_f1(
    generated: Mapping[str, Sequence[tuple[str, Sequence[float]]]],
    references: Mapping[str, Mapping[str, Any] | Sequence[Sequence[tuple[str, Any]]]],
    mentioned: Mapping[str, Collection[str] | Sequence[Collection[str]]] | None = None,
    *,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """F1_all and F1_loc of grounded captions (Zhou et al., "Grounded Video Description", CVPR 2019, Sec. 5).

    As Hu et al. (ICIP 2022, Table 1) report them on Flickr30k Entities, with the rules of GVD's
    ``eval_grd_flickr30k_entities.py`` (the module docstring lists how the 0/1 entries ``P_m[c]``, ``R_m[c]``
    are collected, per reference caption). Over ``V``, the classes annotated in the references of the
    generated images, a class without entries counting 0 (so a class never generated has precision 0)::

        precision_m = (1/|V|) sum_{c in V} mean(P_m[c])        recall_m = (1/|V|) sum_{c in V} mean(R_m[c])
        F1_m = 2 precision_m recall_m / (precision_m + recall_m)   (0 when both are 0),   m in {all, loc}

    F1_all charges language errors (hallucinated or missing object words) and grounding errors (IoU <= 0.5);
    F1_loc only the grounding errors of object words that are both generated and in the reference caption.

    Args:
        generated: ``{image_id: [(class_name, [x1, y1, x2, y2]), ...]}``, the object words of the one generated
            caption, in generation order, each with its attended/grounded box (xyxy, pixel edges, exclusive
            ``x2``/``y2``, see :func:`weakground.metrics.box_iou`). ``[]``: a caption without object words.
        references: per image either ``[caption_words, ...]``, one per reference caption, ``caption_words`` being
            ``[(class_name, boxes), ...]`` its annotated object words in sentence order (GVD exactly); or the
            per-image ground truth ``{class_name: boxes}``, scored as one reference caption (one entry per class
            and image, not per caption: an approximation). ``boxes``: one ``[4]`` box or a ``[K, 4]`` list (an
            entity with several boxes: the best IoU counts).
        mentioned: optional, per image, the words (classes) the references mention: a set for all its captions,
            or one set per reference caption. A generated class that a caption mentions without an annotated box
            is not counted as hallucinated against it (GVD compares Stanford CoreNLP lemmas: normalise both
            sides the same way). Absent: only annotated classes are known, every other generated class counts 0.
        iou_threshold: in [0, 1), 0.5 in GVD and Hu et al.

    Returns:
        ``{"f1_all", "f1_loc", "precision_all", "recall_all", "precision_loc", "recall_loc": float,
        "per_class": {c: {"precision_all", "recall_all", "precision_loc", "recall_loc": float, "support": int}}
        for c in V, "n_classes": |V|}``, fractions in [0, 1]; ``support`` counts the reference words of ``c``.

    Raises:
        InputError: an image of ``generated`` without references, a malformed word or box, an empty caption
            list, or no annotated object word in the references of the generated images (``V`` empty).
    """
    lists, vocab = _collect(generated, references, mentioned, iou_threshold)
    names = {"precision_all": "prec_all", "recall_all": "rec_all", "precision_loc": "prec_loc",
             "recall_loc": "rec_loc"}
    per_class = {c: {key: _mean(lists[name][c]) for key, name in names.items()} for c in sorted(vocab)}
    for c, row in per_class.items():
        row["support"] = len(lists["rec_all"][c])
    out: dict[str, Any] = {key: sum(row[key] for row in per_class.values()) / len(vocab) for key in names}
    out["f1_all"] = _f1(out["precision_all"], out["recall_all"])
    out["f1_loc"] = _f1(out["precision_loc"], out["recall_loc"])
    out.update(per_class=per_class, n_classes=len(vocab))
    return out
