"""Caption metrics (pycocoevalcap) and GVD's grounding F1 (F1_all, F1_loc): hand-computed cases and edge cases."""

import math
import random
import shutil
from collections import defaultdict

import pytest

from weakground.errors import InputError, WeakgroundError
from weakground.metrics import caption_scores, grounding_f1, simple_tokenize
from weakground.metrics import captioning

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="java not on PATH: METEOR and the PTB tokenizer are Java programs")

M = [0, 0, 10, 10]     # the man of image 1
D = [20, 20, 30, 30]   # the dog of image 1
D2 = [0, 0, 10, 10]    # the dog of image 2
B = [10, 10, 20, 20]   # the ball of image 2
FAR = [50, 50, 60, 60]  # IoU 0 with everything above

# Image 1: two reference captions ("a man and his dog", "a man"); the caption generated "man" on the man and
# "dog" far from the dog. Image 2: one reference caption ("a dog with a ball"); generated "dog" on the dog and
# a hallucinated "cat". V = {man, dog, ball}.
GENERATED = {"1": [("man", M), ("dog", FAR)], "2": [("dog", D2), ("cat", [0, 0, 5, 5])]}
REFERENCES = {"1": [[("man", M), ("dog", D)], [("man", M)]], "2": [[("dog", D2), ("ball", B)]]}


def test_grounding_f1_hand_computed():
    r = grounding_f1(GENERATED, REFERENCES)
    # precision entries (per reference caption x generated word):
    #   img1 cap0: man in cap, IoU 1 -> P_all[man] += 1, P_loc[man] += 1; dog in cap, IoU 0 -> 0 to both
    #   img1 cap1: man -> 1 to both; dog not in cap1 (and not excused) -> 0 to P_all[dog] only
    #   img2 cap0: dog, IoU 1 -> 1 to both; cat not in cap -> 0 to P_all[cat] (cat is not in V)
    #   P_all: man [1, 1] = 1, dog [0, 0, 1] = 1/3, ball [] = 0  -> precision_all = (1 + 1/3 + 0) / 3 = 4/9
    #   P_loc: man 1, dog [0, 1] = 1/2, ball 0                   -> precision_loc = 1.5 / 3 = 1/2
    # recall entries (per reference word, against the first generated word of its class):
    #   img1 cap0: man -> 1 to both; dog -> 0 to both.  img1 cap1: man -> 1 to both
    #   img2 cap0: dog -> 1 to both; ball never generated -> 0 to R_all only
    #   R_all: man 1, dog [0, 1] = 1/2, ball [0] = 0  -> recall_all = 1.5 / 3 = 1/2
    #   R_loc: man 1, dog 1/2, ball [] = 0            -> recall_loc = 1/2
    # F1_all = 2 (4/9)(1/2) / (4/9 + 1/2) = 8/17;  F1_loc = 2 (1/2)(1/2) / 1 = 1/2
    assert r["n_classes"] == 3
    assert r["precision_all"] == pytest.approx(4 / 9)
    assert r["recall_all"] == pytest.approx(1 / 2)
    assert r["precision_loc"] == pytest.approx(1 / 2)
    assert r["recall_loc"] == pytest.approx(1 / 2)
    assert r["f1_all"] == pytest.approx(8 / 17)
    assert r["f1_loc"] == pytest.approx(1 / 2)
    assert set(r["per_class"]) == {"man", "dog", "ball"}  # the hallucinated "cat" is not a class of V
    assert r["per_class"]["dog"] == pytest.approx(
        {"precision_all": 1 / 3, "recall_all": 1 / 2, "precision_loc": 1 / 2, "recall_loc": 1 / 2, "support": 2})
    # a class never generated: precision 0 in both modes, and it still counts in the average over V
    assert r["per_class"]["ball"] == {"precision_all": 0.0, "recall_all": 0.0, "precision_loc": 0.0,
                                      "recall_loc": 0.0, "support": 1}
    assert r["per_class"]["man"]["support"] == 2


def test_words_mentioned_without_a_box_are_not_hallucinations():
    # "dog" is a word of image 1's second caption that carries no box: generating it is not penalised there
    r = grounding_f1(GENERATED, REFERENCES, {"1": [set(), {"a", "dog"}]})
    # P_all[dog] = [0, 1] (the img1 cap1 entry is gone) -> precision_all = (1 + 1/2 + 0) / 3 = 1/2; F1_all = 1/2
    assert r["precision_all"] == pytest.approx(1 / 2)
    assert r["f1_all"] == pytest.approx(1 / 2)
    assert r["f1_loc"] == pytest.approx(1 / 2)  # loc never counts unmatched words


def test_no_generated_object_word_scores_zero():
    r = grounding_f1({"1": []}, {"1": [[("man", M)]]})
    # no precision entry; R_all[man] = [0], R_loc[man] = [] -> everything 0, F1 defined as 0 (no 0/0)
    assert (r["f1_all"], r["f1_loc"], r["precision_all"], r["recall_all"]) == (0.0, 0.0, 0.0, 0.0)
    assert r["per_class"]["man"]["support"] == 1


def test_iou_exactly_half_is_a_miss_as_in_gvd():
    gt = {"1": [[("man", [0, 0, 10, 10])]]}
    half = {"1": [("man", [0, 0, 20, 10])]}  # inter 100, union 200: IoU = 0.5, and GVD counts IoU > 0.5
    assert grounding_f1(half, gt)["f1_loc"] == 0.0
    assert grounding_f1(half, gt, iou_threshold=0.49)["f1_loc"] == 1.0
    over = {"1": [("man", [0, 0, 19, 10])]}  # inter 100, union 190: IoU 0.526
    assert grounding_f1(over, gt)["f1_all"] == 1.0


def test_per_image_ground_truth_and_several_boxes_per_class():
    truth = {"1": {"people": [[0, 0, 10, 10], [20, 0, 30, 10]], "tree": [[40, 0, 50, 50]]}}
    gen = {"1": [("people", [20, 0, 30, 10]), ("tree", [0, 0, 5, 5]), ("shirt", [0, 0, 5, 5]),
                 ("cat", [0, 0, 5, 5])]}
    r = grounding_f1(gen, truth, {"1": {"people", "tree", "shirt"}})
    # {class: boxes} is one pseudo-caption. people matches the second box of the entity (1 to P and R, both
    # modes); tree misses (0 to both); shirt is mentioned without a box: excused; cat: 0 to P_all[cat], cat not
    # in V = {people, tree}. P_all = P_loc = R_all = R_loc = (1 + 0) / 2 -> F1 = 1/2 in both modes
    assert r["n_classes"] == 2
    assert r["per_class"]["people"]["precision_all"] == 1.0 and r["per_class"]["tree"]["recall_loc"] == 0.0
    assert r["f1_all"] == pytest.approx(0.5) and r["f1_loc"] == pytest.approx(0.5)
    # the same as the explicit one-caption form; without `mentioned`, "shirt" gets a 0 in P_all[shirt], but
    # shirt is not in V, so the scores do not move
    assert grounding_f1(gen, {"1": [list(truth["1"].items())]}) == grounding_f1(gen, truth)


def test_an_image_missing_from_generated_counts_as_not_grounded():
    refs = {"1": [[("man", M)]], "2": [[("man", M), ("tree", B)]]}
    r = grounding_f1({"1": [("man", M)]}, refs)
    # V = {man} (only images with a generated caption); R_all[man] = R_loc[man] = [1, 0]; P[man] = [1]
    # -> P = 1, R = 1/2, F1 = 2/3 in both modes; "tree" (only in the missing image) is not in V
    assert r["n_classes"] == 1
    assert r["f1_all"] == pytest.approx(2 / 3) and r["f1_loc"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("generated, references, mentioned, words", [
    ({"9": []}, {"1": [[("man", M)]]}, None, "'9' is in generated but not in references"),
    ({"1": []}, {"1": []}, None, "a non-empty list of reference captions"),
    ({"1": [("man", [0, 0, 1])]}, {"1": [[("man", M)]]}, None, "must have shape [4]"),
    ({"1": [("man", M)]}, {"1": [[("man", [])]]}, None, "must have shape"),
    ({"1": ["man"]}, {"1": [[("man", M)]]}, None, "not a (class_name, box) pair"),
    ({"1": [("man", M)]}, {"1": [[]]}, None, "no annotated object word"),
    ({"1": [("man", M)]}, {"1": [[("man", M)]]}, {"1": [set(), set()]}, "one set per reference caption (1)"),
    ({"1": [("man", M)]}, {"1": [[("man", M)]]}, {"1": "man"}, "must be a set of words"),
])
def test_grounding_f1_bad_input_is_one_line(generated, references, mentioned, words):
    with pytest.raises(InputError) as err:
        grounding_f1(generated, references, mentioned)
    assert words in str(err.value) and "\n" not in str(err.value)


def _gvd_iou(a, b):
    """bbox_overlaps_batch of GVD (inclusive pixel ends, "+ 1") on our exclusive-end boxes (x2 - 1)."""
    iw = max(0, min(a[2], b[2]) - 1 - max(a[0], b[0]) + 1)
    ih = max(0, min(a[3], b[3]) - 1 - max(a[1], b[1]) + 1)
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih)


def _gvd_grd_eval(pred, ref, excl, mode):
    """A transliteration of GVD's FlickrGrdEval.grd_eval (lemmas replaced by the given word sets)."""
    vocab, prec, rec = set(), defaultdict(list), defaultdict(list)
    for img, caps in ref.items():
        for k, ann in enumerate(caps):
            if img not in pred:
                continue
            first = {}
            for c, b in ann:
                vocab.add(c)
                first.setdefault(c, b)
            for c, b in pred[img]:
                if c in first:
                    prec[c].append(1 if _gvd_iou(b, first[c]) > 0.5 else 0)
                elif c in excl.get(img, [set()] * len(caps))[k]:
                    pass
                elif mode == "all":
                    prec[c].append(0)
            for c, b in ann:
                gen = [g for x, g in pred[img] if x == c]
                if gen:
                    rec[c].append(1 if _gvd_iou(gen[0], b) > 0.5 else 0)
                elif mode == "all":
                    rec[c].append(0)
        if img not in pred:
            for ann in caps:
                for c, _ in ann:
                    rec[c].append(0)
    p = sum(sum(h) / len(h) for h in prec.values()) / len(vocab)
    r = sum(sum(h) / len(h) for h in rec.values()) / len(vocab)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def test_grounding_f1_agrees_with_the_gvd_reference_loops_on_random_cases():
    rng = random.Random(0)
    classes = ["man", "dog", "ball", "tree", "cat"]

    def box():
        x, y = rng.randint(0, 6), rng.randint(0, 6)
        return [x, y, x + rng.randint(1, 5), y + rng.randint(1, 5)]

    checked = 0
    for _ in range(200):
        n = rng.randint(1, 4)
        ref = {str(i): [[(rng.choice(classes), box()) for _ in range(rng.randint(0, 3))]
                        for _ in range(rng.randint(1, 3))] for i in range(n)}
        pred = {i: [(rng.choice(classes), box()) for _ in range(rng.randint(0, 4))] for i in ref if rng.random() < .8}
        excl = {i: [set(rng.sample(classes, rng.randint(0, 2))) for _ in ref[i]] for i in ref if rng.random() < .5}
        if not any(cap for i in pred for cap in ref[i]):
            continue  # V empty: an InputError here, a division by zero in GVD
        ours = grounding_f1(pred, ref, excl)
        for mode in ("all", "loc"):
            p, r, f = _gvd_grd_eval(pred, ref, excl, mode)
            assert (ours[f"precision_{mode}"], ours[f"recall_{mode}"], ours[f"f1_{mode}"]) == pytest.approx((p, r, f))
        checked += 1
    assert checked > 150


def test_grounding_f1_threshold_is_checked():
    with pytest.raises(InputError, match="iou_threshold"):
        grounding_f1({"1": []}, {"1": [[("man", M)]]}, iou_threshold=1.0)


# ----------------------------------------------------------------------------------------- caption scores

REFS = {"a": ["a man rides a horse", "a person on a horse"], "b": ["two dogs play in the snow"]}


@needs_java
def test_identical_captions_with_ptb_and_meteor():
    # capitals and punctuation are removed by the PTB tokenizer, so these are identical to a reference
    r = caption_scores(REFS, {"a": "A man rides a horse.", "b": "Two dogs play in the snow!"})
    assert r["tokenizer"] == "ptb" and r["n_images"] == 2
    for n in (1, 2, 3, 4):
        assert r[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)  # pycocoevalcap's smoothing leaves ~1e-10
    assert r["ROUGE-L"] == pytest.approx(1.0)
    assert r["CIDEr"] > 0
    assert 0.0 <= r["METEOR"] <= 1.0 and r["METEOR"] > 0.9
    assert r["SPICE"] is None and "CoreNLP" in r["unavailable"]["SPICE"]
    assert set(r["unavailable"]) == {"SPICE"}


def test_disjoint_candidate_scores_zero_without_java():
    r = caption_scores(REFS, {"a": "zebra zebra", "b": "purple"}, tokenizer="simple",
                       metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert r["BLEU-1"] == pytest.approx(0.0, abs=1e-9) and r["CIDEr"] == 0.0 and r["ROUGE-L"] == 0.0
    # only the requested metrics come back
    assert set(r) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "unavailable", "tokenizer",
                      "n_images"} and r["unavailable"] == {}


def test_bleu_and_rouge_hand_computed():
    r = caption_scores({"x": ["a man rides"]}, {"x": "a man"}, tokenizer="simple",
                       metrics=("BLEU", "ROUGE-L", "CIDEr"))
    # BLEU-1: p1 = 2/2, brevity penalty exp(1 - 3/2); BLEU-2: p2 = 1/1, same penalty
    assert r["BLEU-1"] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert r["BLEU-2"] == pytest.approx(math.exp(-0.5), rel=1e-6)
    # ROUGE-L: LCS 2, P = 1, R = 2/3, beta = 1.2: (1 + b^2) P R / (R + b^2 P)
    assert r["ROUGE-L"] == pytest.approx(2.44 * (2 / 3) / (2 / 3 + 1.44))
    assert r["CIDEr"] == 0.0  # one image: every idf is log(1) - log(1) = 0


def test_without_java_meteor_is_unavailable_and_tokens_are_simple(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    r = caption_scores(REFS, {"a": "A man rides a horse.", "b": "two dogs"})
    assert r["tokenizer"] == "simple" and r["METEOR"] is None and r["SPICE"] is None
    assert "java" in r["unavailable"]["METEOR"] and set(r["unavailable"]) == {"METEOR", "SPICE"}
    with pytest.raises(WeakgroundError, match="java"):
        caption_scores(REFS, {"a": "a man"}, tokenizer="ptb")


def test_simple_tokenizer():
    assert simple_tokenize("A dog, running!  Isn't it?") == "a dog running isn't it"


@pytest.mark.parametrize("references, candidates, words", [
    ({"a": ["a man"]}, {"b": "a man"}, "image 'b' is in candidates but not in references"),
    ({"a": []}, {"a": "a man"}, "image 'a' has an empty reference list"),
    ({"a": ["a man", "  "]}, {"a": "a man"}, "reference 1 of image 'a'"),
    ({"a": "a man"}, {"a": "a man"}, "must be a list of strings"),
    ({"a": ["a man"]}, {}, "candidates is empty"),
])
def test_caption_scores_bad_input_is_one_line(references, candidates, words):
    with pytest.raises(InputError) as err:
        caption_scores(references, candidates, tokenizer="simple", metrics=("BLEU",))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_caption_scores_unknown_metric():
    with pytest.raises(InputError, match="metrics must be a collection of"):
        caption_scores({"a": ["a man"]}, {"a": "a man"}, metrics=("CIDEr-D",))
